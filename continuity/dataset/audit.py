"""Dataset audit against the guidelines: square, resolution, count, framing, head pose,
near-duplicates and identity outliers, with a table, a coverage grid and a contact sheet.

Framing comes from how much of the person is visible below the face, in face heights: the face
box top to the bottom of the person (the person mask's lowest row, or the image bottom when the
person runs out of the frame or there is no mask). Head pose comes from the face landmarks
(``continuity.faces.head_pose``). Identity: each image's main face against the mean embedding of
the *other* images (leave-one-out), read against the model's own same-person threshold.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ContinuityError
from ..limits import MAX_CONTACT_THUMBS
from ..faces import head_pose
from ..arrays import as_float_rgb, mask_bbox
from ..faces.base import Face, as_uint8_rgb
from ..fix.geometry import resize
from ..scoring.cache import EmbeddingCache, content_hash
from ..scoring.similarity import identity_score, identity_similarity, reference_cosines

FRAMINGS = ("close-up", "close-up portrait", "portrait", "3/4 shot", "full body")
SCALES = {"close-up": "close", "close-up portrait": "close", "portrait": "medium", "3/4 shot": "medium",
          "full body": "long"}
POSES = ("frontal", "left", "right", "up", "down")
# visible extent below the face-box top, in face-box heights: upper bounds of each class
FRAMING_BOUNDS = (1.9, 3.0, 5.0, 8.0)


@dataclass
class AuditOptions:
    min_side: int = 1024
    min_count: int = 20
    yaw_threshold: float = 20.0        # degrees; beyond: left / right
    pitch_threshold: float = 25.0      # degrees; beyond: up / down
    duplicate_bits: int = 6            # dHash Hamming distance (of 64) at or below: near-duplicate
    use_person_mask: bool = True
    analysis_side: int = 1024          # images are analysed at most this large (faces/landmarks)


@dataclass
class ImageAudit:
    name: str
    width: int
    height: int
    square: bool
    resolution_ok: bool
    faces: int
    face_box: tuple | None = None
    extent: float | None = None
    framing: str = "unknown"
    scale: str = "unknown"
    yaw: float | None = None
    pitch: float | None = None
    pose: str = "unknown"
    identity: float | None = None
    identity_outlier: bool = False
    duplicate_of: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)


def framing_class(extent: float) -> str:
    for name, bound in zip(FRAMINGS, FRAMING_BOUNDS):
        if extent < bound:
            return name
    return FRAMINGS[-1]


def visible_extent(face_box, height: int, person_mask: np.ndarray | None = None, thr: float = 0.5) -> float:
    """Face-box top to the lowest visible point of the person, in face-box heights."""
    x0, y0, x1, y1 = face_box
    fh = max(1.0, y1 - y0)
    bottom = float(height)
    bb = None if person_mask is None else mask_bbox(person_mask, thr)
    # a person ending well inside the frame is shown whole (down to the feet)
    if bb is not None and bb[3] < height * 0.98:
        bottom = max(float(bb[3]), float(y1))
    return (bottom - y0) / fh


def pose_class(yaw: float, pitch: float, yaw_threshold: float = 20.0, pitch_threshold: float = 25.0) -> str:
    """frontal / left / right / up / down. left/right are image directions: 'left' when the nose
    points to the image's left (the subject turns to their own right)."""
    if abs(yaw) >= yaw_threshold:
        return "right" if yaw > 0 else "left"
    if pitch >= pitch_threshold:
        return "up"
    if pitch <= -pitch_threshold:
        return "down"
    return "frontal"


def dhash(rgb: np.ndarray, size: int = 8) -> int:
    """The difference hash of the image: the standard 8-bit grey PIL recipe, so that hashes compare
    with other tools' (an analysis value, not pixels anyone sees: the pack's resampling is geometry.resize)."""
    grey = Image.fromarray(as_uint8_rgb(rgb)).convert("L").resize((size + 1, size), Image.Resampling.BILINEAR)
    a = np.asarray(grey, np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@dataclass
class _Analysis:
    faces: list
    mask: np.ndarray | None
    embedding: np.ndarray | None
    dhash: int
    scale: float


_cache = EmbeddingCache(max_items=2048)


def _analyse(rgb: np.ndarray, detector, embedder, opt: AuditOptions, person_mask_fn) -> _Analysis:
    u8 = as_uint8_rgb(rgb)
    key = (content_hash(u8), getattr(detector, "name", type(detector).__name__),
           getattr(embedder, "name", None) if embedder is not None else None,
           bool(opt.use_person_mask and person_mask_fn), opt.analysis_side)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    h, w = u8.shape[:2]
    s = min(1.0, opt.analysis_side / max(h, w))
    # the detectors' 8-bit working copy; nothing resized here is ever output
    work = u8 if s >= 1.0 else np.asarray(Image.fromarray(u8).resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR))
    faces = detector.detect(work) if detector is not None else []
    mask = person_mask_fn(work) if (opt.use_person_mask and person_mask_fn is not None and faces) else None
    emb = None
    if embedder is not None and faces:
        try:
            emb = np.asarray(embedder.embed(work, faces[:1]), np.float32)[0]
        except Exception:
            emb = None
    res = _Analysis(faces=faces, mask=mask, embedding=emb, dhash=dhash(work), scale=s)
    _cache.put(key, res)
    return res


@dataclass
class AuditResult:
    images: list[ImageAudit]
    coverage: dict            # framing -> pose -> count
    summary: dict
    missing: list[str]

    def as_dict(self) -> dict:
        return {"images": [asdict(a) for a in self.images], "coverage": self.coverage,
                "summary": self.summary, "missing": self.missing}


def audit(images: list[np.ndarray], names: list[str] | None = None, *, detector=None, embedder=None,
          person_mask_fn=None, options: AuditOptions | None = None, threshold: float | None = None,
          workers: int = 2, progress=None, reference: np.ndarray | None = None) -> AuditResult:
    """Audit a set of images (uint8 or float RGB arrays).

    Identity outliers are judged with the pack's identity measure (the mean of the cosines to the
    references, :func:`continuity.scoring.similarity.identity_similarity`): against ``reference``
    ((M, D) embeddings of the reference portraits, e.g. a character's, same model as ``embedder``)
    when given, else against the other images of the set (leave one out).
    """
    opt = options or AuditOptions()
    names = list(names or [])
    names += [f"image_{i + 1}" for i in range(len(names), len(images))]
    analyses = _analyse_all(images, detector, embedder, opt, person_mask_fn, workers, progress)
    rows = [_image_row(img, name, an, opt) for img, name, an in zip(images, names, analyses)]
    _mark_duplicates(rows, analyses, opt.duplicate_bits)
    thr = threshold if threshold is not None else getattr(embedder, "threshold", None)
    _mark_identity(rows, analyses, thr, reference)
    coverage, missing = _coverage(rows)
    summary = _summary(rows, opt, thr, against="references" if reference is not None else "set")
    n = len(rows)
    if n < opt.min_count:
        missing.insert(0, f"only {n} images (guideline: at least {opt.min_count})")
    if summary["square"] < n:
        missing.append(f"{n - summary['square']} images not square")
    if summary["resolution_ok"] < n:
        missing.append(f"{n - summary['resolution_ok']} images below {opt.min_side}px")
    return AuditResult(images=rows, coverage=coverage, summary=summary, missing=missing)


def _analyse_all(images, detector, embedder, opt: AuditOptions, person_mask_fn, workers: int,
                 progress) -> list[_Analysis]:
    """Every image analysed once (faces, person mask, embedding, hash), ``workers`` at a time."""
    def one(i):
        r = _analyse(images[i], detector, embedder, opt, person_mask_fn)
        if progress is not None:
            progress(i)
        return r

    if workers > 1 and len(images) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(len(images))))
    return [one(i) for i in range(len(images))]


def _image_row(img, name: str, an: _Analysis, opt: AuditOptions) -> ImageAudit:
    """One image's row: size checks, then framing and pose from its first (largest) face."""
    h, w = np.asarray(img).shape[:2]
    row = ImageAudit(name=name, width=int(w), height=int(h), square=(w == h),
                     resolution_ok=min(w, h) >= opt.min_side, faces=len(an.faces))
    if not row.square:
        row.issues.append(f"not square ({w}x{h})")
    if not row.resolution_ok:
        row.issues.append(f"below {opt.min_side}px ({min(w, h)}px)")
    if not an.faces:
        row.issues.append("no face found")
        return row
    f: Face = an.faces[0]
    inv = 1.0 / an.scale
    row.face_box = tuple(round(v * inv, 1) for v in f.box)
    if len(an.faces) > 1:
        row.issues.append(f"{len(an.faces)} faces")
    row.extent = round(visible_extent(f.box, round(h * an.scale), an.mask), 2)
    row.framing = framing_class(row.extent)
    row.scale = SCALES[row.framing]
    if f.landmarks5 is not None or f.mesh is not None:
        yaw, pitch, _ = head_pose(f)
        row.yaw, row.pitch = round(yaw, 1), round(pitch, 1)
        row.pose = pose_class(yaw, pitch, opt.yaw_threshold, opt.pitch_threshold)
    return row


def _mark_duplicates(rows: list[ImageAudit], analyses: list[_Analysis], max_bits: int) -> None:
    """Pairs whose difference hashes are within ``max_bits`` name each other as near-duplicates."""
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if hamming(analyses[i].dhash, analyses[j].dhash) <= max_bits:
                rows[i].duplicate_of.append(rows[j].name)
                rows[j].duplicate_of.append(rows[i].name)
    for r in rows:
        if r.duplicate_of:
            r.issues.append("near-duplicate of " + ", ".join(r.duplicate_of))


def _mark_identity(rows: list[ImageAudit], analyses: list[_Analysis], thr: float | None,
                   reference: np.ndarray | None) -> None:
    """Each embedded image's identity measure (the mean of its cosines) against ``reference`` (the
    (M, D) reference embeddings) when given, else against the other images; below ``thr`` it is an
    identity outlier."""
    embs = [(i, a.embedding) for i, a in enumerate(analyses) if a.embedding is not None]
    if reference is not None:
        sims = _similarity_to_reference(embs, reference)
        against = " to the references"
    else:
        sims = _similarity_leave_one_out(embs)
        against = ""
    for i, sim in sims:
        rows[i].identity = round(sim, 4)
        if thr is not None and sim < thr:
            rows[i].identity_outlier = True
            rows[i].issues.append(f"identity outlier ({sim:.3f} < {thr:.3f}{against})")


def _similarity_to_reference(embs: list[tuple[int, np.ndarray]], reference: np.ndarray) -> list[tuple[int, float]]:
    """The identity measure of each embedding against the (M, D) reference embeddings."""
    if not embs:
        return []
    ref = np.atleast_2d(np.asarray(reference, np.float32))
    dims = {e.shape[-1] for _, e in embs}
    if dims != {ref.shape[1]}:
        raise ContinuityError(f"the reference embeddings have {ref.shape[1]} dimensions, the images' "
                              f"{', '.join(str(d) for d in sorted(dims))}: use the identity model the references "
                              "were embedded with", input="character")
    sims = identity_similarity(np.stack([e for _, e in embs]), ref)
    return [(i, float(s)) for (i, _), s in zip(embs, sims)]


def _similarity_leave_one_out(embs: list[tuple[int, np.ndarray]]) -> list[tuple[int, float]]:
    """The identity measure of each embedding against the other images of the set."""
    if len(embs) < 2:
        return []
    cos = reference_cosines(np.stack([e for _, e in embs]), np.stack([e for _, e in embs]))
    return [(i, identity_score(np.delete(cos[k], k))) for k, (i, _e) in enumerate(embs)]


def _coverage(rows: list[ImageAudit]) -> tuple[dict, list[str]]:
    """Images per framing and pose, and what the guidelines miss (a framing, a close-up pose)."""
    coverage = {fr: {p: 0 for p in POSES} for fr in FRAMINGS}
    for r in rows:
        if r.framing in coverage and r.pose in POSES:
            coverage[r.framing][r.pose] += 1
    missing = [f"no {fr} image" for fr in FRAMINGS if not any(coverage[fr].values())]
    close = coverage["close-up"]
    missing += [f"no close-up with head {p}" for p in POSES
                if close[p] == 0 and coverage["close-up portrait"][p] == 0]
    return coverage, missing


def _summary(rows: list[ImageAudit], opt: AuditOptions, thr: float | None, *, against: str) -> dict[str, Any]:
    n = len(rows)
    return {
        "count": n, "count_ok": n >= opt.min_count, "min_count": opt.min_count,
        "square": sum(r.square for r in rows), "resolution_ok": sum(r.resolution_ok for r in rows),
        "no_face": sum(r.faces == 0 for r in rows),
        "duplicates": sum(bool(r.duplicate_of) for r in rows),
        "identity_outliers": sum(r.identity_outlier for r in rows),
        "identity_threshold": thr,
        "identity_against": against,
        "scales": {s: sum(r.scale == s for r in rows) for s in ("close", "medium", "long")},
    }


# ---------------------------------------------------------------- reports

def table_text(result: AuditResult) -> str:
    head = ["image", "size", "faces", "framing", "scale", "pose", "yaw", "pitch", "identity", "issues"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result.images:
        lines.append(" | ".join([
            r.name, f"{r.width}x{r.height}", str(r.faces), r.framing, r.scale, r.pose,
            "" if r.yaw is None else f"{r.yaw:.0f}", "" if r.pitch is None else f"{r.pitch:.0f}",
            "" if r.identity is None else f"{r.identity:.3f}", "; ".join(r.issues) or "ok"]))
    s = result.summary
    lines.append("")
    lines.append(f"{s['count']} images; square {s['square']}/{s['count']}; >= min side {s['resolution_ok']}/{s['count']}; "
                 f"no face {s['no_face']}; near-duplicates {s['duplicates']}; identity outliers {s['identity_outliers']}; "
                 f"scales close {s['scales']['close']}, medium {s['scales']['medium']}, long {s['scales']['long']}")
    if result.missing:
        lines.append("Missing: " + "; ".join(result.missing))
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def coverage_image(result: AuditResult, cell: int = 96) -> np.ndarray:
    """Grid framing x pose: the count in each cell, red where none, amber for one, green for more."""
    pad_left, pad_top = int(cell * 1.9), int(cell * 0.6)
    W = pad_left + cell * len(POSES)
    H = pad_top + cell * len(FRAMINGS)
    im = Image.new("RGB", (W, H), (245, 245, 245))
    d = ImageDraw.Draw(im)
    f = _font(max(10, cell // 6))
    fb = _font(max(12, cell // 3))
    for j, p in enumerate(POSES):
        d.text((pad_left + j * cell + 6, pad_top // 3), p, fill=(20, 20, 20), font=f)
    for i, fr in enumerate(FRAMINGS):
        d.text((6, pad_top + i * cell + cell // 3), fr, fill=(20, 20, 20), font=f)
        for j, p in enumerate(POSES):
            n = result.coverage[fr][p]
            col = (214, 69, 65) if n == 0 else ((240, 180, 60) if n == 1 else (80, 170, 90))
            x0, y0 = pad_left + j * cell, pad_top + i * cell
            d.rectangle([x0 + 2, y0 + 2, x0 + cell - 3, y0 + cell - 3], fill=col)
            d.text((x0 + cell // 3, y0 + cell // 4), str(n), fill=(255, 255, 255), font=fb)
    return np.asarray(im, np.float32) / 255.0


def _thumbnail(img, box: int) -> np.ndarray:
    """``img`` shrunk (never enlarged) to fit a ``box`` square, with the pack's one resampling."""
    rgb = as_float_rgb(img)
    h, w = rgb.shape[:2]
    s = box / max(h, w)
    if s >= 1.0:
        return rgb
    return resize(rgb, max(1, round(h * s)), max(1, round(w * s)))


def contact_sheet(images: list[np.ndarray], result: AuditResult, thumb: int = 192, columns: int = 0,
                  max_thumbs: int = MAX_CONTACT_THUMBS) -> np.ndarray:
    """Thumbnails with their labels; red frame on images with issues. Built in uint8; at most
    ``max_thumbs`` images are shown (those with issues first, then in order), so the sheet's size is
    bounded whatever the number of images."""
    order = sorted(range(len(images)), key=lambda k: (not result.images[k].issues, k))[:max_thumbs]
    images = [images[k] for k in order]
    rows_in = [result.images[k] for k in order]
    n = len(images)
    if n == 0:
        return np.zeros((thumb, thumb, 3), np.float32)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows_n = int(np.ceil(n / cols))
    label_h = max(30, thumb // 4)
    W, H = cols * thumb, rows_n * (thumb + label_h)
    sheet = Image.new("RGB", (W, H), (30, 30, 30))
    d = ImageDraw.Draw(sheet)
    f = _font(max(9, thumb // 16))
    for k, (img, r) in enumerate(zip(images, rows_in)):
        t = Image.fromarray(as_uint8_rgb(_thumbnail(img, thumb - 6)))
        x = (k % cols) * thumb
        y = (k // cols) * (thumb + label_h)
        sheet.paste(t, (x + (thumb - t.width) // 2, y + (thumb - t.height) // 2))
        col = (214, 69, 65) if r.issues else (80, 170, 90)
        d.rectangle([x + 1, y + 1, x + thumb - 2, y + thumb - 2], outline=col, width=3)
        d.text((x + 4, y + thumb + 1), r.name[:28], fill=(235, 235, 235), font=f)
        d.text((x + 4, y + thumb + 1 + label_h // 2), f"{r.framing} / {r.pose}", fill=col, font=f)
    return np.asarray(sheet, np.float32) / 255.0
