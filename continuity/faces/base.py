"""The face-analysis interface that every backend implements and every stage uses.

Images are passed as ``uint8`` RGB arrays (H, W, 3) (use :func:`as_uint8_rgb` to convert from
float, grey or RGBA). Coordinates are pixels of the image that was given, x to the right, y down.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..arrays import as_uint8_rgb as as_uint8_rgb  # the face backends' input format, re-exported


@dataclass
class Face:
    """One detected face."""
    box: tuple[float, float, float, float]            # x0, y0, x1, y1
    score: float                                       # detector confidence (backend's scale, 0-1 where it can)
    image_index: int = 0                               # index of the image in its batch
    landmarks5: np.ndarray | None = None               # (5, 2): eyes, nose, mouth corners (backend order noted in `extra`)
    landmarks68: np.ndarray | None = None              # (68, 2) iBUG 300-W order
    mesh: np.ndarray | None = None                     # (478, 3) MediaPipe face mesh, x/y in pixels
    backend: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in a uint8 RGB image, largest first."""


@runtime_checkable
class FaceEmbedder(Protocol):
    name: str            # e.g. "dlib-resnet128"
    dim: int             # embedding size
    threshold: float     # the model's own cosine-similarity threshold for "same person"

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(len(faces), dim) float32 L2-normalised identity embeddings, batched where possible."""
