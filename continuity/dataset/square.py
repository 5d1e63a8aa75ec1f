"""Content-aware square crops around the character, resized with Lanczos.

The square is as large as the image allows (its short side) unless ``margin``/``fit`` ask for
the whole person; it is placed so that the character stays in it: centred across on the person
(mask centroid, else the face), and along the long side so that the whole person fits if it can,
otherwise with head room above the face.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import as_float_rgb, mask_bbox
from ..fix.geometry import resize

Box = tuple[float, float, float, float]


@dataclass
class SquarePlan:
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 of the square in the source (may exceed it in "pad" mode)
    side: int                        # source side of the square, px
    target: int                      # output side, px
    upscale: float                   # target / side
    warning: str = ""                # non-empty when the source is upscaled beyond the limit


def _mask_box(mask: np.ndarray | None, thr: float = 0.5) -> Box | None:
    bb = None if mask is None else mask_bbox(mask, thr)
    return None if bb is None else (float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3]))


def _place(lo_need: float, hi_need: float, side: float, extent: float, prefer: float) -> float:
    """Start of a window of length ``side`` in [0, extent] covering [lo_need, hi_need] if it can,
    else starting near ``prefer``."""
    if side >= extent:
        return (extent - side) / 2.0
    if hi_need - lo_need <= side:
        start = (lo_need + hi_need) / 2.0 - side / 2.0
    else:
        start = prefer
    return float(min(max(start, 0.0), extent - side))


def plan_square(width: int, height: int, *, face_box: Box | None = None, person_mask: np.ndarray | None = None,
                target: int = 1024, max_upscale: float = 1.5, mode: str = "crop") -> SquarePlan:
    """Where to cut the square.

    ``mode``: ``"crop"`` (largest square inside the image, placed on the character) or ``"pad"``
    (the square holding the whole image, to be padded).
    """
    w, h = float(width), float(height)
    if mode == "pad":
        side = max(w, h)
        x0 = (w - side) / 2.0
        y0 = (h - side) / 2.0
    else:
        side = min(w, h)
        person = _mask_box(person_mask)
        subject = person or face_box
        if subject is None:
            x0 = (w - side) / 2.0
            y0 = (h - side) / 2.0
        else:
            if person is not None:
                m = np.asarray(person_mask) > 0.5
                cx = float(np.flatnonzero(m.any(axis=0)).mean()) if face_box is None else (face_box[0] + face_box[2]) / 2
            else:
                assert face_box is not None
                cx = (face_box[0] + face_box[2]) / 2
            # across: the face centre (the person's centre if there is no face); along: the person if it fits
            if w > h:
                need = (subject[0], subject[2]) if person is not None else (cx - side / 2, cx + side / 2)
                x0 = _place(need[0], need[1], side, w, cx - side / 2)
                if face_box is not None and not (x0 <= face_box[0] and face_box[2] <= x0 + side):
                    x0 = _place(face_box[0], face_box[2], side, w, cx - side / 2)
                y0 = 0.0
            else:
                x0 = 0.0
                if face_box is not None:
                    fh = face_box[3] - face_box[1]
                    top = face_box[1] - 0.6 * fh           # head room (hair)
                    lo = min(top, subject[1])
                    hi = subject[3] if person is not None else face_box[3] + 0.4 * fh
                    y0 = _place(lo, hi, side, h, top)
                else:
                    y0 = _place(subject[1], subject[3], side, h, subject[1])
    side_i = int(round(side))
    x0i, y0i = int(round(x0)), int(round(y0))
    if mode != "pad":
        x0i = min(max(x0i, 0), int(width) - side_i)
        y0i = min(max(y0i, 0), int(height) - side_i)
    up = target / max(1, side_i)
    warning = ""
    if up > max_upscale:
        warning = (f"the {side_i}px square is upscaled {up:.2f}x to {target}px (limit {max_upscale:g}x): "
                   f"detail will be soft; use a larger source")
    return SquarePlan(box=(x0i, y0i, x0i + side_i, y0i + side_i), side=side_i, target=int(target),
                      upscale=up, warning=warning)


def apply_square(rgb: np.ndarray, plan: SquarePlan, *, pad_color=(0, 0, 0), mask: np.ndarray | None = None):
    """Cut and resize with the pack's one resampling (``geometry.resize``: float Lanczos-3, never
    rounded to 8 bits; the mask with its triangle filter). ``rgb`` float [0,1] or uint8 (H, W, 3);
    ``pad_color`` 0-255. Returns (rgb float32, mask or None)."""
    arr = as_float_rgb(rgb)
    x0, y0, x1, y1 = plan.box
    h, w = arr.shape[:2]
    side = plan.side
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x1), min(h, y1)
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        crop = np.empty((side, side, 3), np.float32)
        crop[:] = np.asarray(pad_color, np.float32) / np.float32(255.0)
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    else:
        crop = arr[y0:y1, x0:x1]
    out = resize(crop, plan.target, plan.target)
    out_mask = None
    if mask is not None:
        m = np.asarray(mask, np.float32)
        mc = np.zeros((side, side), np.float32)
        mc[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = m[sy0:sy1, sx0:sx1]
        out_mask = resize(mc, plan.target, plan.target, kernel="triangle")
    return out, out_mask


def square_panel_box(panel_box: tuple[int, int, int, int], face_box: Box | None) -> tuple[int, int, int, int]:
    """The largest square inside a sheet panel, placed on its face (head room above)."""
    x0, y0, x1, y1 = panel_box
    local_face = None
    if face_box is not None:
        local_face = (face_box[0] - x0, face_box[1] - y0, face_box[2] - x0, face_box[3] - y0)
    plan = plan_square(x1 - x0, y1 - y0, face_box=local_face, target=1, max_upscale=1e9)
    bx0, by0, bx1, by1 = plan.box
    return x0 + bx0, y0 + by0, x0 + bx1, y0 + by1
