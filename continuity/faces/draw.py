"""Previews: boxes, landmarks and mask overlays drawn on a copy of the image, and the per-image
face list that the CONTINUITY_FACES socket carries."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .base import Face, as_uint8_rgb


@dataclass
class FaceBatch:
    """Faces of a batch of images: ``faces[i]`` are those of image ``i`` (each Face has
    ``image_index == i``), ``sizes[i]`` its (height, width)."""
    faces: list[list[Face]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    backend: str = ""

    @property
    def count(self) -> int:
        return sum(len(f) for f in self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    def __repr__(self) -> str:
        return f"FaceBatch({len(self.faces)} images, {self.count} faces, backend={self.backend!r})"


def draw_faces(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, index (largest first), score and landmarks."""
    out = as_uint8_rgb(rgb).copy()
    h, w = out.shape[:2]
    t = max(1, round(max(h, w) / 400))
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), t)
        cv2.putText(out, f"{i}: {f.score:.2f}", (x0, max(12 * t, y0 - 4 * t)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * t, (0, 255, 0), t, cv2.LINE_AA)
        pts = f.landmarks68 if f.landmarks68 is not None else (f.mesh[:, :2] if f.mesh is not None else None)
        if pts is not None:
            for x, y in np.asarray(pts)[:, :2]:
                cv2.circle(out, (int(x), int(y)), max(1, t // 2), (255, 255, 0), -1)
        if f.landmarks5 is not None:
            for x, y in np.asarray(f.landmarks5):
                cv2.circle(out, (int(x), int(y)), 2 * t, (255, 0, 0), -1)
    return out


def overlay(rgb: np.ndarray, mask: np.ndarray, colour=(255, 0, 64), alpha: float = 0.5,
            faces: list[Face] | None = None) -> np.ndarray:
    """``rgb`` with ``mask`` tinted in ``colour`` and its outline drawn (and the boxes of ``faces``)."""
    base = as_uint8_rgb(rgb).astype(np.float32)
    m = np.clip(mask.astype(np.float32), 0, 1)[..., None] * alpha
    out = (base * (1 - m) + np.asarray(colour, np.float32) * m).astype(np.uint8)
    contours, _ = cv2.findContours((mask > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    t = max(1, round(max(out.shape[:2]) / 500))
    cv2.drawContours(out, contours, -1, (255, 255, 255), t)
    for f in faces or []:
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), t)
    return out
