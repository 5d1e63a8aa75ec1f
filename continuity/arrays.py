"""Image-array helpers every pipeline stage shares, defined once: pixel-format conversion and the
bounding box of a mask. (Resampling has one definition too: ``continuity.fix.geometry.resize``, float
Lanczos-3 that never rounds to 8 bits.)"""
from __future__ import annotations

from typing import Any

import numpy as np

#: an image or mask: a numpy array or a torch tensor (CPU or not), float [0, 1] or uint8
ImageLike = Any


def _numpy(image: ImageLike) -> np.ndarray:
    if hasattr(image, "detach"):  # a torch tensor (ComfyUI's IMAGE/MASK), without importing torch
        image = image.detach().cpu().numpy()
    return np.asarray(image)


def _three_channels(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        return arr[..., :3]
    return arr


def as_uint8_rgb(image: ImageLike) -> np.ndarray:
    """Float [0, 1] or uint8; grey (H, W), (H, W, 1), RGB or RGBA -> contiguous uint8 (H, W, 3),
    rounded to the nearest level (values outside [0, 1] are clipped)."""
    arr = _three_channels(_numpy(image))
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def as_uint8_mask(mask: ImageLike) -> np.ndarray:
    """A float [0, 1] mask (H, W) -> uint8 0-255, rounded to the nearest level, clipped."""
    return np.clip(np.rint(np.asarray(_numpy(mask), np.float32) * 255.0), 0, 255).astype(np.uint8)


def as_float_rgb(image: ImageLike) -> np.ndarray:
    """Float [0, 1] or uint8; grey, RGB or RGBA -> contiguous float32 (H, W, 3) in [0, 1] (uint8 / 255)."""
    arr = _three_channels(_numpy(image))
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def mask_bbox(mask: ImageLike, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the pixels above ``threshold``; None if there are none."""
    m = _numpy(mask) > threshold
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
