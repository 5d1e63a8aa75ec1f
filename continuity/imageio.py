"""Reading images and their captions from folders, the way ComfyUI's LoadImage reads one.

Images come back as float32 RGB arrays in [0, 1] (H, W, 3) and a mask (H, W) that follows
ComfyUI's convention: ``mask = 1 - alpha`` (1 where the image is transparent), zeros when the
file has no alpha channel. EXIF orientation is applied; 16-bit and palette images are handled.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .errors import ContinuityError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def natural_key(text: str):
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_images(folder: str, *, recursive: bool = False) -> list[str]:
    """Image files of ``folder`` (relative paths), in natural order; hidden files skipped."""
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
            for f in files:
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(root, f), folder))
    else:
        for f in os.listdir(folder):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)):
                found.append(f)
    return sorted(found, key=natural_key)


def pil_to_rgb_and_mask(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """RGB float32 (H, W, 3) in [0, 1] and mask = 1 - alpha (zeros without alpha)."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "I;16" or img.mode == "I;16B" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / scale, 0, 1)
        return np.repeat(grey[..., None], 3, axis=2).astype(np.float32), np.zeros(grey.shape, np.float32)
    if img.mode == "P":
        img = img.convert("RGBA")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(rgba[..., :3]), (1.0 - rgba[..., 3]).astype(np.float32)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, np.zeros(rgb.shape[:2], np.float32)


def load_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one image file as (rgb, mask); a clear error if it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb_and_mask(img)
    except (OSError, ValueError) as exc:
        raise ContinuityError(f"cannot read image '{os.path.basename(path)}': {exc}") from exc


def read_caption(image_path: str, extension: str = ".txt") -> str:
    """The caption stored beside an image (``name.txt``), or an empty string."""
    ext = extension if extension.startswith(".") else "." + extension
    path = os.path.splitext(image_path)[0] + ext
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    return ""


@dataclass
class FolderItem:
    name: str          # path relative to the folder, e.g. "img1.jpg" or "sub/img2.png"
    rgb: np.ndarray    # (H, W, 3) float32
    mask: np.ndarray   # (H, W) float32, 1 - alpha
    caption: str


def load_folder(folder: str, *, recursive: bool = False, start: int = 0, limit: int = 0,
                caption_extension: str = ".txt") -> list[FolderItem]:
    """Load the images of ``folder`` with their captions, ``start`` and ``limit`` selecting a page."""
    names = list_images(folder, recursive=recursive)
    if start:
        names = names[start:]
    if limit and limit > 0:
        names = names[:limit]
    items = []
    for name in names:
        path = os.path.join(folder, name)
        rgb, mask = load_image(path)
        items.append(FolderItem(name=name.replace(os.sep, "/"), rgb=rgb, mask=mask,
                                caption=read_caption(path, caption_extension)))
    return items
