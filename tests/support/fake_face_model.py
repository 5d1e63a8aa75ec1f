"""A stand-in FACE_MODEL for graph tests with tiny random-weight models, which draw no real faces.

The detector "finds" one face, the central half of any image; the embedder's identity vector is the
face crop reduced to 4x4 RGB, centred and L2-normalised. Scores are therefore real cosine
similarities of real pixels (deterministic for the same image), spread over [-1, 1], so a test can
put a threshold between them and see images pass and fail, and a face fix change them.
"""
from __future__ import annotations

import numpy as np

from continuity.faces.base import Face, as_uint8_rgb


class CentreFaceDetector:
    name = "test-centre"

    def detect(self, rgb: np.ndarray, image_index: int = 0) -> list[Face]:
        h, w = rgb.shape[:2]
        return [Face(box=(w * 0.25, h * 0.25, w * 0.75, h * 0.75), score=1.0, image_index=image_index,
                     backend="test")]


class PixelEmbedder:
    name = "test-pixels"
    dim = 48
    threshold = 0.5
    batchable = True

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        import cv2
        rgb = as_uint8_rgb(rgb)
        out = []
        for f in faces:
            x0, y0, x1, y1 = (int(round(v)) for v in f.box)
            out.append(cv2.resize(rgb[y0:y1, x0:x1], (4, 4), interpolation=cv2.INTER_AREA))
        return out

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        v = np.stack([c.astype(np.float32).reshape(-1) for c in chips]) if chips else np.zeros((0, self.dim))
        v = v - v.mean(axis=1, keepdims=True)
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)).astype(np.float32)

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_chips(self.chips(rgb, faces))


class CentreFaceModel:
    """Duck-typed like Load Face Model's value: ``detector``, ``embedder``, ``detect``."""

    def __init__(self):
        self.detector = CentreFaceDetector()
        self.embedder = PixelEmbedder()
        self.parser = None

    def detect(self, rgb: np.ndarray, image_index: int = 0) -> list[Face]:
        return self.detector.detect(rgb, image_index)
