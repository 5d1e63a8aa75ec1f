"""Face similarity of candidate images to reference portraits, per identity model.

**The identity measure** (one definition, used by every node and core function that says "similar
to the character / the references"): :func:`identity_similarity`, the MEAN of the cosines of a
face's embedding to each reference portrait's embedding. It is the quantity the models' published
thresholds (pairwise cosine similarities) are valid for, averaged over the references. It is *not*
the cosine to the normalised mean embedding, which is that number divided by the mean's norm and so
always larger (see docs/scoring.md).

For every image: detect faces once, pick one by the policy (largest, or the one inside a mask),
embed it once per model (cached by image content), then cosine similarity to each reference.
A candidate without a face gets no score (``None``) and a flag, never a made-up number; a
reference without a face is an error naming that image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ContinuityError
from ..faces import get_detector
from ..faces.base import Face, as_uint8_rgb
from .cache import EmbeddingCache, content_hash

POLICIES = ("largest", "in_mask", "only_one")

default_cache = EmbeddingCache()


# --------------------------------------------------------------------------- detection

def get_face_detector(name: str = "dlib"):
    """The face module's detector (one cache, in ``continuity.faces.get_detector``)."""
    return get_detector(name)


# --------------------------------------------------------------------------- picking a face

def _mask_share(face: Face, mask: np.ndarray) -> float:
    h, w = mask.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(np.asarray(mask[y0:y1, x0:x1], np.float32).mean())


def pick_face(faces: list[Face], policy: str, mask: np.ndarray | None = None) -> tuple[int | None, str]:
    """Index of the face to use and a note ('' if fine, else why none was used)."""
    if not faces:
        return None, "no face found"
    if policy == "only_one":
        if len(faces) > 1:
            return None, f"{len(faces)} faces found (policy only_one)"
        return 0, ""
    if policy == "in_mask" and mask is not None and float(np.max(mask)) > 0:
        shares = [_mask_share(f, mask) for f in faces]
        best = int(np.argmax(shares))
        if shares[best] <= 0.05:
            return None, "no face inside the mask"
        return best, ""
    return int(np.argmax([f.area for f in faces])), ""


# --------------------------------------------------------------------------- embedding

@dataclass
class FaceEmbedding:
    """What scoring one image with one model found."""
    found: bool
    n_faces: int
    face_index: int | None
    box: tuple[float, float, float, float] | None
    embedding: np.ndarray | None         # (dim,) L2-normalised, None when no face was used
    note: str = ""


def _detector_key(detector) -> tuple:
    # detectors are cached per process, so their id is stable; the name makes keys readable
    return (getattr(detector, "name", type(detector).__name__), id(detector))


def _detect_cached(rgb: np.ndarray, h: str, detector, cache: EmbeddingCache) -> list[Face]:
    key = ("faces", h, _detector_key(detector))
    faces = cache.get(key)
    if faces is None:
        faces = list(detector.detect(rgb))
        cache.put(key, faces)
    return faces


def detect_faces(rgb: np.ndarray, detector, cache: EmbeddingCache | None = None) -> list[Face]:
    """The faces ``detector`` finds in ``rgb``, cached by image content (shared with the scoring)."""
    rgb = as_uint8_rgb(rgb)
    return _detect_cached(rgb, content_hash(rgb), detector, default_cache if cache is None else cache)


def embed_images(images: list[np.ndarray], embedder, *, detector=None, policy: str = "largest",
                 masks: list[np.ndarray | None] | None = None, cache: EmbeddingCache | None = None,
                 progress=None, batch_size: int = 16) -> list[FaceEmbedding]:
    """One :class:`FaceEmbedding` per image; each image detected once and embedded once per model.

    Chips of images that are not cached are embedded in batches of ``batch_size``.
    """
    if policy not in POLICIES:
        raise ContinuityError(f"unknown face policy '{policy}'; choose one of {', '.join(POLICIES)}", input="face_policy")
    cache = default_cache if cache is None else cache
    detector = detector or get_face_detector("dlib")
    masks = list(masks or [])
    results: list[FaceEmbedding | None] = [None] * len(images)
    pending: list[tuple[int, tuple, FaceEmbedding]] = []
    chips: list[np.ndarray] = []
    inflight: dict[tuple, FaceEmbedding] = {}
    for i, img in enumerate(images):
        rgb = as_uint8_rgb(img)
        mask = masks[i] if (policy == "in_mask" and i < len(masks)) else None   # masks matter only for in_mask
        if mask is not None and mask.shape[:2] != rgb.shape[:2]:
            raise ContinuityError(f"the mask of image {i} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                  f"{rgb.shape[1]}x{rgb.shape[0]}", input="mask")
        h = content_hash(rgb)
        mkey = content_hash(mask) if (policy == "in_mask" and mask is not None) else "-"
        key = ("emb", h, embedder.name, getattr(embedder, "model_path", ""), _detector_key(detector), policy, mkey)
        hit = cache.get(key)
        if hit is None:
            hit = inflight.get(key)          # the same picture twice in one call: embedded once
        if hit is not None:
            results[i] = hit
            continue
        faces = _detect_cached(rgb, h, detector, cache)
        idx, note = pick_face(faces, policy, mask)
        if idx is None:
            res = FaceEmbedding(False, len(faces), None, None, None, note)
            results[i] = res
            cache.put(key, res)
        else:
            f = faces[idx]
            res = FaceEmbedding(True, len(faces), idx, (float(f.box[0]), float(f.box[1]), float(f.box[2]), float(f.box[3])),
                                None, "")
            chips.extend(embedder.chips(rgb, [f]))
            pending.append((i, key, res))
            inflight[key] = res
            results[i] = res
            if len(chips) >= batch_size:
                _flush(embedder, chips, pending, results, cache)
        if progress:
            progress(i + 1, len(images))
    _flush(embedder, chips, pending, results, cache)
    return results  # type: ignore[return-value]


def embed_faces(rgb: np.ndarray, faces: list[Face], embedder, *, cache: EmbeddingCache | None = None) -> np.ndarray:
    """(len(faces), D) identity embeddings of ``faces`` in ``rgb``; each face embedded once per image
    content (cached), the others of a call in one batch."""
    cache = default_cache if cache is None else cache
    if not faces:
        return np.zeros((0, int(getattr(embedder, "dim", 0) or 0)), np.float32)
    rgb = as_uint8_rgb(rgb)
    h = content_hash(rgb)
    keys = [("face-emb", h, tuple(round(float(v), 2) for v in f.box), f.backend, f.landmarks68 is None,
             *_embedder_key(embedder)) for f in faces]
    out: list[np.ndarray | None] = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        vecs = np.asarray(embedder.embed(rgb, [faces[i] for i in todo]), np.float32)
        for i, v in zip(todo, vecs):
            out[i] = np.asarray(v, np.float32)     # as embed_images keeps it: the same bits
            cache.put(keys[i], out[i])
    return np.stack([v for v in out if v is not None]).astype(np.float32)


def _embedder_key(embedder) -> tuple:
    return (getattr(embedder, "name", type(embedder).__name__), getattr(embedder, "model_path", ""),
            int(getattr(embedder, "dim", 0) or 0))


def _flush(embedder, chips: list, pending: list, results: list, cache: EmbeddingCache) -> None:
    """Embed the waiting chips in one batch and store the results (the lists are emptied)."""
    if not pending:
        return
    vecs = embedder.embed_chips(chips)
    for (i, key, res), v in zip(pending, vecs):
        res.embedding = np.asarray(v, np.float32)
        results[i] = res
        cache.put(key, res)
    chips.clear()
    pending.clear()


# --------------------------------------------------------------------------- the identity measure

def reference_cosines(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(N, M) float32 cosines of N face embeddings to M reference embeddings (both L2-normalised)."""
    e = np.asarray(embeddings, np.float32)
    r = np.asarray(references, np.float32)
    if e.ndim == 1:
        e = e[None]
    if r.ndim == 1:
        r = r[None]
    if e.shape[-1] != r.shape[-1]:
        raise ContinuityError(f"the face embeddings have {e.shape[-1]} dimensions but the references' have "
                              f"{r.shape[-1]} (another identity model?)", input="references")
    # one face at a time, so a face's cosines are the same bits whether it is scored alone or in a batch
    return np.stack([r @ row for row in e]).astype(np.float32) if len(e) else np.zeros((0, len(r)), np.float32)


def identity_score(cosines) -> float:
    """The identity measure of one face from its cosines to the references: their mean."""
    return float(np.mean(np.asarray(cosines, np.float32)))


def identity_similarity(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """THE identity measure: for each of N faces, the mean of its cosines to the M references
    ((N,) float64). Embeddings are L2-normalised (N, D) / (M, D)."""
    return np.array([identity_score(row) for row in reference_cosines(embeddings, references)], np.float64)


def reference_embeddings(references: list[np.ndarray], embedder, *, detector=None,
                         cache: EmbeddingCache | None = None, reference_names: list[str] | None = None,
                         input: str = "references") -> np.ndarray:
    """(M, D) embeddings of the largest face of each reference portrait (cached by content); a
    reference without a face is an error naming it."""
    refs = embed_images(references, embedder, detector=detector, policy="largest", cache=cache)
    for j, r in enumerate(refs):
        if not r.found:
            label = reference_names[j] if reference_names and j < len(reference_names) else f"#{j}"
            h, w = np.asarray(references[j]).shape[:2]
            raise ContinuityError(f"no face found in reference image {label} ({w}x{h}); use a clear portrait",
                                  input=input)
    return np.stack([r.embedding for r in refs if r.embedding is not None]).astype(np.float32)


# --------------------------------------------------------------------------- scores

def _nan_to_none(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class ModelScores:
    model: str
    threshold: float
    sims: np.ndarray                      # (n_candidates, n_references), NaN where no face
    ref_sims: np.ndarray                  # (n_references, n_references)
    candidates: list[FaceEmbedding]
    references: list[FaceEmbedding]

    @property
    def mean(self) -> list[float | None]:
        return [None if not c.found else identity_score(row) for c, row in zip(self.candidates, self.sims)]

    @property
    def max(self) -> list[float | None]:
        return [None if not c.found else float(np.max(row)) for c, row in zip(self.candidates, self.sims)]

    @property
    def baseline(self) -> float | None:
        """Mean similarity of the references among themselves (None with one reference)."""
        n = self.ref_sims.shape[0]
        if n < 2:
            return None
        iu = np.triu_indices(n, 1)
        return float(self.ref_sims[iu].mean())

    def calibrated(self, value: float | None) -> float | None:
        """0 at the model's threshold, 1 when as close as the references are to each other."""
        b = self.baseline
        if value is None or b is None or b - self.threshold <= 1e-6:
            return None
        return float((value - self.threshold) / (b - self.threshold))

    def verdicts(self) -> list[bool | None]:
        return [None if m is None else bool(m >= self.threshold) for m in self.mean]

    def rows(self) -> list[dict]:
        out = []
        for i, (c, m, mx) in enumerate(zip(self.candidates, self.mean, self.max)):
            out.append({
                "index": i, "model": self.model, "face_found": c.found, "faces": c.n_faces,
                "face_used": c.face_index, "box": list(c.box) if c.box else None,
                "per_reference": None if not c.found else [float(v) for v in self.sims[i]],
                "mean": m, "max": mx, "threshold": self.threshold, "same_person": None if m is None else m >= self.threshold,
                "calibrated": self.calibrated(m),
                "as_close_as_references": None if (m is None or self.baseline is None) else m >= self.baseline,
                "note": c.note,
            })
        return out


@dataclass
class ScoreSet:
    """Scores of one named candidate set against the references, for one or more models."""
    name: str
    models: dict[str, ModelScores]
    filenames: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)   # model -> why it did not run

    @property
    def n(self) -> int:
        return len(next(iter(self.models.values())).candidates) if self.models else 0

    def summary(self) -> list[dict]:
        out = []
        for name, ms in self.models.items():
            vals = [v for v in ms.mean if v is not None]
            out.append({
                "set": self.name, "model": name, "count": len(ms.candidates), "scored": len(vals),
                "faces_missing": sum(1 for c in ms.candidates if not c.found),
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals)) if vals else None,
                "threshold": ms.threshold, "reference_baseline": ms.baseline,
                "calibrated_mean": ms.calibrated(float(np.mean(vals))) if vals else None,
                "passing": sum(1 for v in vals if v >= ms.threshold),
            })
        return out

    def to_dict(self) -> dict:
        return {
            "set": self.name, "filenames": self.filenames, "summary": self.summary(),
            "unavailable_models": self.unavailable,
            "models": {k: {"threshold": v.threshold, "reference_baseline": v.baseline,
                           "reference_similarities": v.ref_sims.tolist(),
                           "candidates": [dict(r, file=(self.filenames[r["index"]] if r["index"] < len(self.filenames) else None))
                                          for r in v.rows()]}
                       for k, v in self.models.items()},
        }


def score_set(references: list[np.ndarray], candidates: list[np.ndarray], embedders: list, *,
              name: str = "set", filenames: list[str] | None = None, policy: str = "largest",
              masks: list[np.ndarray | None] | None = None, reference_names: list[str] | None = None,
              detector=None, cache: EmbeddingCache | None = None, progress=None) -> ScoreSet:
    """Score ``candidates`` against ``references`` with each embedder."""
    if not references:
        raise ContinuityError("no reference image given", input="references")
    if not candidates:
        raise ContinuityError("no candidate image given", input="candidates")
    models: dict[str, ModelScores] = {}
    for emb in embedders:
        R = reference_embeddings(references, emb, detector=detector, cache=cache, reference_names=reference_names)
        refs = embed_images(references, emb, detector=detector, policy="largest", cache=cache)   # cached above
        cands = embed_images(candidates, emb, detector=detector, policy=policy, masks=masks, cache=cache,
                             progress=progress)
        sims = np.full((len(cands), len(refs)), np.nan, np.float32)
        for i, c in enumerate(cands):
            if c.found and c.embedding is not None:
                sims[i] = reference_cosines(c.embedding, R)[0]
        models[emb.name] = ModelScores(emb.name, float(emb.threshold), sims, reference_cosines(R, R), cands, refs)
    return ScoreSet(name, models, list(filenames or []))
