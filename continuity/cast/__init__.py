"""A cast: several characters in one shot, and which face is whose.

ComfyUI-free. A :class:`Cast` is an ordered list of character profiles (what the CAST socket
carries). Faces are matched to members by the pack's identity measure (the same one the
single-character nodes use: :func:`continuity.character.identity.character_identity` gives each
member's identity for an embedder; a face's similarity to it is the mean of its cosines to the
member's reference portraits, :func:`continuity.scoring.similarity.identity_similarity`), each
member at its own threshold::

    from continuity.cast import Cast, assign_faces
    cast = Cast([ana, ben])
    sims = cast.similarities(embeddings, embedder, detector=det)   # (faces, members)
    result = assign_faces(sims, cast.thresholds(embedder, detector=det))
    result.member_of_face     # per face: member index or None (unknown: left alone, reported)

:func:`assign_faces` is a proper assignment (the Hungarian method on the similarities): one face per
member, one member per face, only pairs at or above the member's threshold, the total similarity
as high as it can be. Where a member's best face is also that face's best member (the usual case),
that is the pair chosen: best match wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ContinuityError

MAX_MEMBERS = 16
_FORBIDDEN = 1e6


@dataclass
class Cast:
    """The characters of a shot, in order (member index = position)."""
    members: list = field(default_factory=list)       # Character profiles

    def __post_init__(self):
        if not self.members:
            raise ContinuityError("a cast needs at least one character", input="character_1")
        if len(self.members) > MAX_MEMBERS:
            raise ContinuityError(f"a cast has at most {MAX_MEMBERS} characters, got {len(self.members)}",
                                  input="characters")
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ContinuityError(f"character(s) {', '.join(dup)} given twice; each member once", input="characters")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:  # shown in ComfyUI's debug output
        return f"Cast({', '.join(self.names)})"

    def identities(self, embedder, *, detector=None, cache=None) -> list:
        """Each member's identity for ``embedder`` (cached per profile revision by the character module)."""
        from ..character.identity import character_identity
        return [character_identity(m, embedder, detector=detector, cache=cache) for m in self.members]

    def thresholds(self, embedder, *, detector=None, cache=None) -> np.ndarray:
        return np.array([i.threshold for i in self.identities(embedder, detector=detector, cache=cache)],
                        np.float32)

    def similarities(self, embeddings: np.ndarray, embedder, *, detector=None, cache=None) -> np.ndarray:
        """(faces, members) identity similarity of each face embedding to each member."""
        ids = self.identities(embedder, detector=detector, cache=cache)
        return similarity_matrix(embeddings, ids)


def similarity_matrix(embeddings: np.ndarray, identities: list) -> np.ndarray:
    """(faces, members): the identity measure of each face embedding against each member identity."""
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2:
        e = e.reshape(len(e), -1)
    if not identities:
        return np.zeros((len(e), 0), np.float32)
    for ident in identities:
        if e.shape[0] and ident.references.shape[1] != e.shape[1]:
            raise ContinuityError(f"the face embeddings have {e.shape[1]} dimensions but {ident.character}'s "
                                  f"{ident.model} identity has {ident.references.shape[1]}", input="cast")
    if not e.shape[0]:
        return np.zeros((0, len(identities)), np.float32)
    return np.stack([ident.similarity(e) for ident in identities], axis=1).astype(np.float32)


@dataclass
class Assignment:
    member_of_face: list[int | None]           # per face: member index or None
    face_of_member: list[int | None]           # per member: face index or None
    similarities: np.ndarray                   # (faces, members)
    thresholds: np.ndarray                     # (members,)

    def unknown(self) -> list[int]:
        return [i for i, m in enumerate(self.member_of_face) if m is None]

    def describe(self, names: list[str], prefix: str = "") -> list[str]:
        out = []
        for j, name in enumerate(names):
            f = self.face_of_member[j]
            col = self.similarities[:, j] if self.similarities.size else np.zeros(0)
            if f is not None:
                out.append(f"{prefix}{name}: face #{f}, similarity {col[f]:.3f} >= {self.thresholds[j]:.3f}")
            elif len(col):
                best = int(np.argmax(col))
                out.append(f"{prefix}{name}: not found (most similar face #{best}: {col[best]:.3f} < "
                           f"{self.thresholds[j]:.3f}, or taken by a closer match)")
            else:
                out.append(f"{prefix}{name}: not found (no face)")
        for i in self.unknown():
            row = self.similarities[i] if self.similarities.size else np.zeros(0)
            like = f"; most like {names[int(np.argmax(row))]} at {row.max():.3f}" if len(row) else ""
            out.append(f"{prefix}face #{i}: unknown, left alone{like}")
        return out


def assign_faces(similarities: np.ndarray, thresholds, *, allowed: np.ndarray | None = None) -> Assignment:
    """The assignment of faces (rows) to members (columns) with the highest total similarity among
    pairs at or above each member's threshold; one face per member and one member per face.
    ``allowed`` (faces, members) bool: pairs that may be made at all (e.g. not overlapping in time)."""
    s = np.asarray(similarities, np.float64)
    n_f, n_m = s.shape if s.ndim == 2 else (0, 0)
    thr = np.asarray(thresholds, np.float64).reshape(-1)
    if thr.shape[0] != n_m:
        raise ContinuityError(f"{thr.shape[0]} thresholds for {n_m} members", input="cast")
    ok = s >= thr[None, :]
    if allowed is not None:
        ok &= np.asarray(allowed, bool)
    mof: list[int | None] = [None] * n_f
    fom: list[int | None] = [None] * n_m
    if n_f and n_m and ok.any():
        cost = np.where(ok, -s, _FORBIDDEN)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if ok[r, c]:
                mof[r] = int(c)
                fom[c] = int(r)
    return Assignment(mof, fom, s.astype(np.float32), thr.astype(np.float32))


@dataclass
class ImageCast:
    """The faces of one image given to the cast."""
    faces: list                                # largest first
    assignment: Assignment
    names: list[str]

    def chosen(self) -> list:
        """(member index, face) of every face given to a member, in member order."""
        return [(j, self.faces[f]) for j, f in enumerate(self.assignment.face_of_member) if f is not None]

    def describe(self, image_index: int | None = None) -> list[str]:
        where = "" if image_index is None else f"image {image_index}: "
        return self.assignment.describe(self.names, prefix=where)


def cast_faces(rgb: np.ndarray, faces: list, cast: Cast, embedder, *, detector=None, cache=None) -> ImageCast:
    """Each face of ``rgb`` given to the member it matches (see :func:`assign_faces`); unknown faces
    stay unassigned. Embeddings are cached by image content (shared with the other nodes)."""
    from ..character.identity import embed_faces  # the one face-embedding cache
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    if not ordered:
        return ImageCast([], assign_faces(np.zeros((0, len(cast))), np.zeros(len(cast))), cast.names)
    emb = embed_faces(rgb, ordered, embedder, cache=cache)
    sims = cast.similarities(emb, embedder, detector=detector, cache=cache)
    return ImageCast(ordered, assign_faces(sims, cast.thresholds(embedder, detector=detector, cache=cache)), cast.names)
