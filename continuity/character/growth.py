"""Layered growth of a synthetic character dataset: close-up -> ... -> full body.

Each layer is made from the previous one by outpainting a larger canvas around every image (the
node does the sampling with ComfyUI's own padding and inpaint conditioning), fixing faces,
scoring each candidate against the references (and, for animated characters, the style
references), and keeping those above the profile's thresholds for review. This module holds the
ComfyUI-free parts: the framing ladder and canvas geometry, the colour-statistics style score, the
CLIP-I style score's arithmetic and threshold, the filter, and writing the layer with its provenance
into a new dataset version.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ContinuityError

# The framing ladder; each step widens the canvas by ``scale`` (area grows by scale^2).
LAYERS = ("closeup", "closeup_portrait", "portrait", "three_quarter", "full_body")
LAYER_SCALE = {"closeup_portrait": 1.5, "portrait": 1.5, "three_quarter": 1.6, "full_body": 1.8}
LAYER_PROMPT = {
    "closeup": "close-up of the face",
    "closeup_portrait": "close-up portrait, head and shoulders",
    "portrait": "portrait, upper body",
    "three_quarter": "three-quarter shot, from the knees up",
    "full_body": "full body shot, standing",
}
# Where the old picture sits on the new canvas: horizontally centred, near the top (the body grows
# downwards), as a share of the added height that goes above it.
TOP_SHARE = 0.2


def next_layer(layer: str) -> str:
    if layer not in LAYERS:
        raise ContinuityError(f"unknown layer '{layer}'; the layers are {', '.join(LAYERS)}", input="from_layer")
    i = LAYERS.index(layer)
    if i + 1 >= len(LAYERS):
        raise ContinuityError("full_body is the last layer; there is no wider framing to grow to", input="from_layer")
    return LAYERS[i + 1]


@dataclass(frozen=True)
class Canvas:
    """How an image of the previous layer is placed on the outpainting canvas."""
    inner_w: int     # the old image is resized to this
    inner_h: int
    left: int        # padding, as ImagePadForOutpaint takes it
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.inner_w + self.left + self.right

    @property
    def height(self) -> int:
        return self.inner_h + self.top + self.bottom


def _round8(x: float) -> int:
    return max(8, int(round(x / 8.0)) * 8)


def plan_canvas(width: int, height: int, scale: float, resolution: int, *, top_share: float = TOP_SHARE,
                aspect: float | None = None) -> Canvas:
    """The canvas for outpainting an image of ``width`` x ``height`` by ``scale``.

    The canvas's long side is ``resolution`` (multiples of 8, as the VAE needs); its aspect is the
    image's, or ``aspect`` (width / height) when given (full-body layers are usually taller). The
    image is resized so that it covers 1/scale of the canvas in each direction, centred
    horizontally and ``top_share`` of the added height above it.
    """
    if width < 8 or height < 8:
        raise ContinuityError(f"the image is {width}x{height}; it must be at least 8x8", input="images")
    if scale < 1.0:
        raise ContinuityError(f"the outpaint scale must be at least 1, not {scale}", input="scale")
    if resolution < 64:
        raise ContinuityError(f"the resolution must be at least 64, not {resolution}", input="resolution")
    ar = aspect if aspect else width / height
    if ar >= 1:
        cw, ch = _round8(resolution), _round8(resolution / ar)
    else:
        cw, ch = _round8(resolution * ar), _round8(resolution)
    # inner size: the image's aspect, fitting 1/scale of the canvas in both directions
    s = min(cw / scale / width, ch / scale / height)
    iw = max(8, min(cw, int(round(width * s))))
    ih = max(8, min(ch, int(round(height * s))))
    extra_w, extra_h = cw - iw, ch - ih
    left = extra_w // 2
    top = int(round(extra_h * top_share))
    return Canvas(iw, ih, left, top, extra_w - left, extra_h - top)


# ---------------------------------------------------------------------------- style similarity

def colour_stats(rgb: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Colour statistics of an image: Lab means/stds and a normalised 8x8 (a, b) histogram."""
    import cv2

    from ..faces.base import as_uint8_rgb
    u8 = as_uint8_rgb(rgb)
    lab = cv2.cvtColor(u8, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    if mask is not None:
        sel = np.asarray(mask, np.float32).reshape(-1) > 0.5
        if sel.sum() >= 16:
            lab = lab[sel]
    mean = lab.mean(0)
    std = lab.std(0)
    hist, _, _ = np.histogram2d(lab[:, 1], lab[:, 2], bins=8, range=[[0, 256], [0, 256]])
    hist = hist / max(hist.sum(), 1.0)
    lhist, _ = np.histogram(lab[:, 0], bins=8, range=(0, 256))
    lhist = lhist / max(lhist.sum(), 1.0)
    return {"mean": mean, "std": std, "ab_hist": hist.astype(np.float32), "l_hist": lhist.astype(np.float32)}


def style_similarity(candidate: np.ndarray, references: list[np.ndarray], *, cache: dict | None = None) -> float:
    """Colour-statistics style similarity in [0, 1] of ``candidate`` to ``references`` (mean over them).

    Histogram intersection of the (a, b) chroma and L histograms, times a Gaussian of the distance
    between the Lab moments (means and stds, scaled by 40 levels). 1: same palette and contrast.
    """
    if not references:
        raise ContinuityError("no style reference to compare with", input="character")
    c = colour_stats(candidate)
    sims = []
    for i, ref in enumerate(references):
        r = cache.get(i) if cache is not None else None
        if r is None:
            r = colour_stats(ref)
            if cache is not None:
                cache[i] = r
        inter_ab = float(np.minimum(c["ab_hist"], r["ab_hist"]).sum())
        inter_l = float(np.minimum(c["l_hist"], r["l_hist"]).sum())
        d = np.concatenate([c["mean"] - r["mean"], c["std"] - r["std"]]) / 40.0
        moments = float(np.exp(-0.5 * float(d @ d)))
        sims.append((0.5 * inter_ab + 0.5 * inter_l) ** 0.5 * moments ** 0.5)
    return float(np.mean(sims))


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ContinuityError(f"expected {what} as a (n, d) array of embeddings, got shape {x.shape}", input="clip_vision")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clip_style_scores(candidates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """CLIP-I: for each candidate embedding (n, d), the mean cosine similarity to the reference
    embeddings (m, d) (image embeddings of a CLIP vision model; any scale, normalised here). (n,)"""
    c = _unit_rows(candidates, "the candidates")
    r = _unit_rows(references, "the style references")
    if c.shape[1] != r.shape[1]:
        raise ContinuityError(f"the candidate embeddings have {c.shape[1]} dimensions, the references' {r.shape[1]}",
                              input="clip_vision")
    return (c @ r.T).mean(axis=1)


def clip_style_baseline(references: np.ndarray) -> float | None:
    """How alike the style references are to each other: each reference's mean CLIP-I to the *other*
    references (leave one out), and the lowest of those (the least typical reference). None with
    fewer than two references."""
    r = _unit_rows(references, "the style references")
    m = r.shape[0]
    if m < 2:
        return None
    sims = r @ r.T
    loo = (sims.sum(axis=1) - np.diag(sims)) / (m - 1)
    return float(loo.min())


def clip_style_threshold(node_value: float | None, profile_value: float | None,
                         references: np.ndarray) -> tuple[float | None, str]:
    """The CLIP-I threshold and where it comes from: the node's input (> 0), else the profile's
    ``clip_style_threshold``, else the style references' own :func:`clip_style_baseline` (a candidate
    must be at least as close to the references as the least typical of them is to the rest), else
    None (one style reference and nothing set: the colour statistics decide)."""
    if node_value is not None and node_value > 0:
        return float(node_value), "input"
    if profile_value is not None:
        return float(profile_value), "profile"
    base = clip_style_baseline(references)
    if base is not None:
        return base, "references (lowest leave-one-out mean CLIP-I of the style references)"
    return None, "none (one style reference and no threshold set): filtered on colour statistics"


# ---------------------------------------------------------------------------- the filter

@dataclass
class Candidate:
    source: str                 # name of the image of the previous layer it was grown from
    index: int                  # candidate number within the layer
    seed: int
    canvas: tuple[int, int]     # (width, height) of the outpainted canvas
    face_found: bool = False
    faces: int = 0
    fixed: bool = False
    identity: float | None = None       # the identity measure against the references (face model)
    model: str = ""
    threshold: float | None = None
    style: float | None = None          # colour-statistics style similarity
    style_threshold: float | None = None
    clip_style: float | None = None     # CLIP-I: mean cosine of its CLIP image embedding to the style references'
    clip_style_threshold: float | None = None
    style_metric: str = ""              # what the style filter used: "clip_i", "colour" ("" : no style filter)
    kept: bool = False
    reason: str = ""
    file: str = ""
    fix_note: str = ""                  # what the face fix did (before / after, kept or not)

    def to_dict(self) -> dict:
        return asdict(self)


def apply_filter(cands: list[Candidate], *, threshold: float | None, style_threshold: float | None,
                 need_style: bool, clip_style_threshold: float | None = None) -> list[Candidate]:
    """Mark each candidate kept or not, with the reason; returns the same list.

    With ``need_style``, the style filter uses CLIP-I (``c.clip_style``) against
    ``clip_style_threshold`` when that is given, else the colour statistics (``c.style``) against
    ``style_threshold``.
    """
    use_clip = need_style and clip_style_threshold is not None
    for c in cands:
        c.threshold = threshold
        c.style_threshold = style_threshold if need_style else None
        c.clip_style_threshold = clip_style_threshold if need_style else None
        c.style_metric = ("clip_i" if use_clip else "colour") if need_style else ""
        if not c.face_found or c.identity is None:
            c.kept, c.reason = False, "no face found" if not c.face_found else "face not scored"
        elif threshold is not None and c.identity < threshold:
            c.kept, c.reason = False, f"identity {c.identity:.3f} < threshold {threshold:.3f}"
        elif use_clip and clip_style_threshold is not None and (c.clip_style is None
                                                                 or c.clip_style < clip_style_threshold):
            v = c.clip_style if c.clip_style is not None else float("nan")
            c.kept, c.reason = False, f"CLIP-I style {v:.3f} < {clip_style_threshold:.3f}"
        elif need_style and not use_clip and style_threshold is not None and (c.style is None or c.style < style_threshold):
            c.kept, c.reason = False, f"style {c.style if c.style is not None else float('nan'):.3f} < {style_threshold:.3f}"
        else:
            c.kept = True
            c.reason = "identity" + (f" {c.identity:.3f} >= {threshold:.3f}" if threshold is not None else " scored (no threshold)")
    return cands


# ---------------------------------------------------------------------------- writing the layer

@dataclass
class LayerResult:
    version: int
    folder: str
    layer: str
    kept: int
    candidates: list[Candidate] = field(default_factory=list)


def write_layer(root: str, name: str, layer: str, cands: list[Candidate], images: list[np.ndarray], *,
                previous: str | None, caption: str, provenance: dict) -> LayerResult:
    """The next version of dataset ``name`` under ``root`` (the one dataset-version writer,
    ``continuity.dataset.versions.save_version``): the previous version's images carried over, plus
    ``<layer>/`` with the kept candidates (PNG + caption); the manifest's provenance lists every
    candidate (kept or not) with its scores. An existing version is never changed. With nothing
    kept and no previous version there is nothing to write: the result has version 0 and no folder."""
    from ..dataset import versions as vs
    from .datasets import carry_over, free_folder, jsonable
    kept = [(c, img) for c, img in zip(cands, images) if c.kept]
    carried, parent, label = carry_over(root, previous)
    folder = free_folder(layer, carried)
    new = [vs.Item(filename=f"{layer}_{c.index:04d}.png", rgb=img, caption=caption, folder=folder,
                   source=c.source, scores={k: float(v) for k, v in (("identity", c.identity), ("style", c.style),
                                                              ("clip_style", c.clip_style)) if v is not None})
           for c, img in kept]
    if not carried and not new:     # nothing kept and nothing before it: no version to write (the report says why)
        return LayerResult(0, "", folder, 0, cands)
    for (c, _), it in zip(kept, new):            # a fresh sub-folder: the names are as given
        c.file = f"{folder}/{it.filename}"
    prov = {**provenance, "step": "growth", "layer": layer, "subfolder": folder, "previous_version": label or None,
            "candidates": [c.to_dict() for c in cands]}
    ver = vs.save_version(root, name, carried + new, parent=parent, provenance=jsonable(prov),
                          note=f"layer {layer}: {len(kept)}/{len(cands)} kept")
    if [rec["file"] for rec in ver.items[len(carried):]] != [c.file for c, _ in kept]:
        raise ContinuityError("the dataset version was written with other file names than its provenance lists",
                              input="images")
    return LayerResult(ver.number, ver.path, folder, len(kept), cands)
