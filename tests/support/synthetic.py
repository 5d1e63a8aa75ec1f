"""Synthetic group photos and video shots built from the real face photos (assets/faces), so the
cast, track and flicker tests know the truth: who is where in every frame.

Photos: DeepFace's unit-test images (MIT, Copyright (c) 2019 Sefik Ilkin Serengil; see
assets/faces/README.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# one portrait per identity (see assets/faces/README.md for who is who)
PEOPLE = {"a": "img1", "b": "img3", "c": "img13", "d": "img16", "e": "img18", "f": "img24"}
SAME_AS = {"a": "img2", "b": "img12", "c": "img14", "d": "img17", "e": "img19", "f": "img25"}


def load(faces_dir: Path, name: str, height: int | None = None) -> np.ndarray:
    im = Image.open(Path(faces_dir) / f"{name}.jpg").convert("RGB")
    if height:
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
    return np.asarray(im)


def head_tile(faces_dir: Path, name: str, side: int) -> np.ndarray:
    """A square tile of the portrait's middle (head and shoulders), ``side`` pixels."""
    im = Image.open(Path(faces_dir) / f"{name}.jpg").convert("RGB")
    s = min(im.size)
    x0, y0 = (im.width - s) // 2, max(0, (im.height - s) // 3)
    return np.asarray(im.crop((x0, y0, x0 + s, y0 + s)).resize((side, side), Image.LANCZOS))


@dataclass
class Group:
    image: np.ndarray                              # (H, W, 3) uint8
    tiles: list[tuple[int, int, int, int]]         # per person: x0, y0, x1, y1 of their photo
    names: list[str] = field(default_factory=list)


def tight(photo: np.ndarray, box, width: float = 1.7, above: float = 0.9, below: float = 1.6) -> np.ndarray:
    """The photo cut to ``width`` face widths around the face ``box`` (x0, y0, x1, y1), from
    ``above`` face heights over it to ``below`` under it: heads that touch when put side by side."""
    x0, y0, x1, y1 = box
    fw, fh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    h, w = photo.shape[:2]
    a, b = max(0, int(cx - width * fw / 2)), min(w, int(cx + width * fw / 2))
    c, d = max(0, int(y0 - above * fh)), min(h, int(y1 + below * fh))
    return np.ascontiguousarray(photo[c:d, a:b])


def group_photo(faces_dir: Path, names: list[str], heights: list[int], background: int = 90,
                boxes: list | None = None) -> Group:
    """People side by side, touching, bottom-aligned (so one's shoulders are beside another's head).
    ``boxes``: each photo's face box; the photos are then cut tight around the heads (:func:`tight`)."""
    photos = []
    for k, (n, h) in enumerate(zip(names, heights)):
        p = load(faces_dir, n)
        if boxes is not None:
            p = tight(p, boxes[k])
        photos.append(np.asarray(Image.fromarray(p).resize((max(1, round(p.shape[1] * h / p.shape[0])), h),
                                                           Image.LANCZOS)))
    H = max(p.shape[0] for p in photos)
    W = sum(p.shape[1] for p in photos)
    out = np.full((H, W, 3), background, np.uint8)
    tiles, x = [], 0
    for p in photos:
        h, w = p.shape[:2]
        out[H - h:, x:x + w] = p
        tiles.append((x, H - h, x + w, H))
        x += w
    return Group(out, tiles, list(names))


@dataclass
class Actor:
    """One face in a shot: its tile and its path (centre x, centre y, side) per frame; None: absent."""
    key: str
    tile: np.ndarray
    path: list[tuple[float, float, int] | None]


@dataclass
class Shot:
    frames: np.ndarray                              # (N, H, W, 3) uint8
    truth: list[dict[str, tuple[float, float]]]     # per frame: actor key -> tile centre
    cut: int | None = None                          # first frame after a hard cut


def render(actors: list[Actor], n: int, size: tuple[int, int], background=(70, 80, 95),
           occluders: dict[int, tuple[int, int, int, int]] | None = None, cut: int | None = None) -> Shot:
    """Paste the actors' tiles (resized to their side) at their centres; later actors are in front.
    ``occluders``: frame -> a grey box (x0, y0, x1, y1) drawn over everything."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    truth = []
    for i in range(n):
        bg = np.empty((h, w, 3), np.float32)
        tint = np.array(background, np.float32) if cut is None or i < cut else np.array(background[::-1], np.float32)
        bg[:] = tint + 20 * np.sin(xx / 37.0 + yy / 53.0)[..., None]      # textured, so flow has a grip
        frame = np.clip(bg, 0, 255).astype(np.uint8)
        here = {}
        for a in actors:
            p = a.path[i]
            if p is None:
                continue
            cx, cy, side = p
            tile = np.asarray(Image.fromarray(a.tile).resize((side, side), Image.LANCZOS))
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            sx0, sy0 = max(0, -x0), max(0, -y0)
            dx0, dy0 = max(0, x0), max(0, y0)
            dx1, dy1 = min(w, x0 + side), min(h, y0 + side)
            if dx1 <= dx0 or dy1 <= dy0:
                continue
            frame[dy0:dy1, dx0:dx1] = tile[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
            here[a.key] = (cx, cy)
        if occluders and i in occluders:
            x0, y0, x1, y1 = occluders[i]
            frame[y0:y1, x0:x1] = 128
        frames[i] = frame
        truth.append(here)
    return Shot(frames, truth, cut)
