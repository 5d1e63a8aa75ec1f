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

#: the largest side of any image file the pack decodes (its header is read first)
MAX_SIDE = 16384
#: the most pixels of one decoded image (64 MP: 768 MB as float32 RGB)
MAX_PIXELS = 8192 * 8192
#: the most pixels one folder load decodes in total (about 6 GB as float32 RGB + mask)
MAX_TOTAL_PIXELS = 400_000_000
#: the largest caption file read (bytes)
MAX_CAPTION_BYTES = 64 * 1024


def natural_key(text: str):
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_images(folder: str, *, recursive: bool = False, roots: list[str] | None = None,
                input: str | None = "folder") -> list[str]:
    """Image files of ``folder`` (relative paths), in natural order; hidden files skipped.

    With ``roots``, every file must really lie inside one of them (a link out of them is refused).
    """
    if roots is not None:
        from . import store
        return sorted(store.list_files(folder, roots, input=input, recursive=recursive, extensions=IMAGE_EXTENSIONS),
                      key=natural_key)
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


def _size_problem(width: int, height: int, max_side: int, max_pixels: int) -> str | None:
    if width > max_side or height > max_side:
        return f"is {width}x{height}; the largest side allowed is {max_side}"
    if width * height > max_pixels:
        return f"is {width}x{height} ({width * height} pixels); at most {max_pixels} pixels are allowed"
    return None


def image_size(path: str, *, input: str | None = None) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError:
        raise ContinuityError(f"image {ascii(os.path.basename(path))} is larger than the largest side allowed "
                              f"({MAX_SIDE})", input=input) from None
    except (OSError, ValueError):
        raise ContinuityError(f"cannot read image {os.path.basename(path)!a}: not an image file or damaged",
                              input=input) from None


def load_image(path: str, *, max_side: int | None = None, max_pixels: int | None = None,
               input: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one image file as (rgb, mask); a clear error naming ``input`` if it cannot be read or is
    larger than ``max_side`` / ``max_pixels`` (checked from the header, before decoding). Messages
    name the file, never its folder."""
    max_side = min(max_side or MAX_SIDE, MAX_SIDE)
    max_pixels = min(max_pixels or MAX_PIXELS, MAX_PIXELS)
    shown = ascii(os.path.basename(path))
    try:
        with Image.open(path) as img:
            problem = _size_problem(img.size[0], img.size[1], max_side, max_pixels)
            if problem:
                raise ContinuityError(f"image {shown} {problem}", input=input)
            img.load()
            return pil_to_rgb_and_mask(img)
    except Image.DecompressionBombError:
        raise ContinuityError(f"image {shown} is larger than the largest side allowed ({max_side}) or "
                              f"{max_pixels} pixels", input=input) from None
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, ContinuityError):
            raise
        raise ContinuityError(f"cannot read image {shown}: not an image file or damaged ({type(exc).__name__})",
                              input=input) from None


def read_caption(image_path: str, extension: str = ".txt", *, roots: list[str] | None = None) -> str:
    """The caption stored beside an image (``name.txt``), or an empty string. With ``roots``, a
    caption file that is a link leading out of them is refused."""
    ext = extension if extension.startswith(".") else "." + extension
    path = os.path.splitext(image_path)[0] + ext
    if os.path.isfile(path):
        if roots is not None:
            from . import store
            if not any(store.inside(path, r) for r in roots):
                raise ContinuityError(f"the caption file {os.path.basename(path)!a} is a link to outside the "
                                      "allowed folders; refused", input="folder")
        if os.path.getsize(path) > MAX_CAPTION_BYTES:
            raise ContinuityError(f"the caption file {os.path.basename(path)!a} is larger than "
                                  f"{MAX_CAPTION_BYTES} bytes", input="caption_extension")
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(MAX_CAPTION_BYTES).strip()
    return ""


@dataclass
class FolderItem:
    name: str          # path relative to the folder, e.g. "img1.jpg" or "sub/img2.png"
    rgb: np.ndarray    # (H, W, 3) float32
    mask: np.ndarray   # (H, W) float32, 1 - alpha
    caption: str


def load_folder(folder: str, *, recursive: bool = False, start: int = 0, limit: int = 0,
                caption_extension: str = ".txt", roots: list[str] | None = None,
                max_total_pixels: int = MAX_TOTAL_PIXELS) -> list[FolderItem]:
    """Load the images of ``folder`` with their captions, ``start`` and ``limit`` selecting a page.

    With ``roots``, files that are links out of them are refused. The page's total size is checked
    from the file headers before anything is decoded (``max_total_pixels``).
    """
    names = list_images(folder, recursive=recursive, roots=roots)
    if start:
        names = names[start:]
    if limit and limit > 0:
        names = names[:limit]
    total = 0
    for name in names:
        w, h = image_size(os.path.join(folder, name), input="folder")
        total += w * h
        if total > max_total_pixels:
            raise ContinuityError(f"the images from {name!a} on exceed {max_total_pixels} pixels in one load; "
                                  "load the folder in pages with start and limit", input="limit")
    items = []
    for name in names:
        path = os.path.join(folder, name)
        rgb, mask = load_image(path, input="folder")
        items.append(FolderItem(name=name.replace(os.sep, "/"), rgb=rgb, mask=mask,
                                caption=read_caption(path, caption_extension, roots=roots)))
    return items
