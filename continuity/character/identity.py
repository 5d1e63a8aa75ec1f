"""Which of the faces in an image is the character's: identity matching against a profile.

ComfyUI-free; the mask and face-fix nodes only adapt it (``which = "character"``)::

    from continuity.character.identity import choose_character_face
    match = choose_character_face(rgb, faces, char, embedder, detector=detector)
    match.chosen          # the Face, or None (no face, or the best one is below the threshold)
    match.describe(i)     # "image 0: character 'ana' is face #1 of 2 (0 = largest, box ...), similarity 0.962 >= ..."

The character's identity for an embedder (:func:`character_identity`) is the embeddings of its
reference portraits (the largest face of each, found by the same detector as the faces being
matched), exactly as Face Similarity embeds references. It is worked out once per profile revision,
embedder and detector per process; the portraits' embeddings are also cached by image content
(shared with the scoring nodes), so no embedding is computed twice.

A face's similarity is the pack's one identity measure
(:func:`continuity.scoring.similarity.identity_similarity`: the mean of its cosines to the
references), so Face Fix, Face Region Mask, Face Similarity, Dataset Audit and the training plan
give the same number for the same face and portraits. The most similar face is the character's if
it reaches the threshold: the profile's for that model, else the profile's default, else the
model's own (``char.threshold(model, embedder.threshold)``).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ContinuityError
from ..faces.base import Face, as_uint8_rgb
from ..scoring.cache import EmbeddingCache
from ..scoring.similarity import embed_faces, embed_images, identity_similarity

_MAX_IDENTITIES = 64
_identities: OrderedDict = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class CharacterIdentity:
    """A character's identity for one embedder: the reference embeddings faces are compared with."""
    character: str
    revision: int
    model: str                      # the embedder's name (the key of the profile's thresholds)
    references: np.ndarray = field(repr=False)   # (M, D) float32, L2-normalised, one per portrait
    threshold: float
    source: str                     # where the embeddings come from, for reports

    def __post_init__(self):
        refs = np.asarray(self.references, np.float32)
        object.__setattr__(self, "references", refs[None] if refs.ndim == 1 else refs)   # one vector: one reference

    def similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """The identity measure of each of the (N, D) ``embeddings`` against this character."""
        return identity_similarity(embeddings, self.references)

    def describe(self) -> str:
        return (f"character '{self.character}' (revision {self.revision}): {self.model}, {self.source}, "
                f"threshold {self.threshold:.3f}")


def _detector_key(detector) -> tuple:
    if detector is None:
        return ("-",)
    return (getattr(detector, "name", type(detector).__name__), id(detector))


def _embedder_key(embedder) -> tuple:
    return (getattr(embedder, "name", type(embedder).__name__), getattr(embedder, "model_path", ""),
            int(getattr(embedder, "dim", 0) or 0))


def character_identity(char, embedder, *, detector=None, cache: EmbeddingCache | None = None) -> CharacterIdentity:
    """The character's reference embeddings for ``embedder`` (see the module docstring).

    ``detector`` finds the faces in the reference portraits (default: the scoring module's dlib
    detector). Errors name the ``character`` input.
    """
    model = getattr(embedder, "name", None) or type(embedder).__name__
    # the embeddings are cached; the threshold is read from the profile on every call. The key names
    # the profile folder and the reference files (stored by content hash, so the same names are the
    # same pictures).
    key = (os.path.realpath(char.folder) if char.folder else "", char.name, int(char.revision),
           tuple(char.references), _embedder_key(embedder), _detector_key(detector))
    threshold = char.threshold(model, float(getattr(embedder, "threshold", 0.0)))
    with _lock:
        hit = _identities.get(key)
        if hit is not None:
            _identities.move_to_end(key)
            return replace(hit, threshold=float(threshold))
    ident = _from_portraits(char, embedder, model, float(threshold), detector, cache)
    with _lock:
        _identities[key] = ident
        while len(_identities) > _MAX_IDENTITIES:
            _identities.popitem(last=False)
    return ident


def _from_portraits(char, embedder, model, threshold, detector, cache) -> CharacterIdentity:
    paths = char.reference_images()
    if not paths:
        raise ContinuityError(f"the profile '{char.name}' has no reference portraits to recognise the character "
                              "by; add portraits with Save Character", input="character")
    refs = [as_uint8_rgb(a) for a in char.load_reference_images()]
    found = [r.embedding for r in embed_images(refs, embedder, detector=detector, policy="largest", cache=cache)
             if r.found and r.embedding is not None]
    if not found:
        raise ContinuityError(f"no face was found in the {len(refs)} reference portrait(s) of '{char.name}', so "
                              "the character cannot be recognised", input="character")
    return CharacterIdentity(char.name, int(char.revision), model, np.stack(found).astype(np.float32), threshold,
                             f"{len(found)} reference portrait(s)")


def clear_cache() -> None:
    """Forget the identities worked out so far (tests)."""
    with _lock:
        _identities.clear()


# --------------------------------------------------------------------------- matching faces

@dataclass
class FaceMatch:
    """The faces of one image compared with a character."""
    identity: CharacterIdentity
    faces: list[Face]                     # largest first
    similarities: list[float]             # per face, same order
    best: int | None                      # index of the most similar face, None without faces

    @property
    def best_similarity(self) -> float | None:
        return None if self.best is None else self.similarities[self.best]

    @property
    def passed(self) -> bool:
        return self.best is not None and self.similarities[self.best] >= self.identity.threshold

    @property
    def chosen(self) -> Face | None:
        """The character's face, or None (no face, or the most similar one is below the threshold)."""
        return self.faces[self.best] if self.passed and self.best is not None else None

    def describe(self, image_index: int | None = None) -> str:
        where = "" if image_index is None else f"image {image_index}: "
        who, thr, model = self.identity.character, self.identity.threshold, self.identity.model
        if self.best is None:
            return f"{where}no face found to compare with character '{who}'"
        n = len(self.faces)
        sim = self.similarities[self.best]
        x0, y0, x1, y1 = (int(round(v)) for v in self.faces[self.best].box)
        box = f"0 = largest, box {x0},{y0}-{x1},{y1}"
        others = [f"{s:.3f}" for i, s in enumerate(self.similarities) if i != self.best]
        rest = f"; other face(s): {', '.join(others)}" if others else ""
        if self.passed:
            return (f"{where}character '{who}' is face #{self.best} of {n} ({box}), "
                    f"similarity {sim:.3f} >= threshold {thr:.3f} ({model}){rest}")
        return (f"{where}no face matches character '{who}': the most similar is face #{self.best} of {n} ({box}), "
                f"similarity {sim:.3f} < threshold {thr:.3f} ({model}){rest}")


def match_faces(rgb: np.ndarray, faces: list[Face], identity: CharacterIdentity, embedder, *,
                cache: EmbeddingCache | None = None) -> FaceMatch:
    """Compare every face of ``rgb`` with ``identity``; the most similar one is the candidate."""
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    if not ordered:
        return FaceMatch(identity, [], [], None)
    emb = embed_faces(rgb, ordered, embedder, cache=cache)
    if emb.shape[1] != identity.references.shape[1]:
        raise ContinuityError(f"the face embeddings have {emb.shape[1]} dimensions but the character's "
                              f"{identity.model} identity has {identity.references.shape[1]}", input="character")
    sims = [float(v) for v in identity.similarity(emb)]
    return FaceMatch(identity, ordered, sims, int(np.argmax(sims)))


def choose_character_face(rgb: np.ndarray, faces: list[Face], char, embedder, *, detector=None,
                          cache: EmbeddingCache | None = None) -> FaceMatch:
    """The character's identity for ``embedder`` (cached per revision), then :func:`match_faces`."""
    ident = character_identity(char, embedder, detector=detector, cache=cache)
    return match_faces(rgb, faces, ident, embedder, cache=cache)
