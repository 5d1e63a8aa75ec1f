"""Face analysis: detectors, region parsers, head masks, and the registry that caches them.

Public API (stable; other stages code against it)
-------------------------------------------------
``get_detector(name="dlib"|"mediapipe"|"retinaface"|"insightface", device="cpu", models_dir=None, **opts)``
    A cached :class:`~continuity.faces.base.FaceDetector` (one per name/options per process).
    ``detector.detect(rgb_uint8) -> list[Face]``, largest first. Every Face carries ``box``,
    ``score`` (0-1), ``landmarks5`` (5, 2) in the order left eye, right eye, nose, mouth left,
    mouth right (image left/right), and where the backend gives them ``landmarks68`` (dlib) or
    ``mesh`` (478, 3) (mediapipe).

``load_analyzer(backend="mediapipe", device="cpu", models_dir=None, parser="auto", embedder="auto") -> FaceAnalyzer``
    What the FACE_MODEL socket carries: detector + region parser + the *name* of an identity
    embedder (``analyzer.embedder()`` calls ``continuity.faces.embedders.get_embedder`` lazily).
    ``analyzer.detect(rgb)``, ``analyzer.parse(rgb, face) -> dict[region, (H, W) float32]``,
    ``analyzer.regions`` (what its parser can give).

``face_region_mask(rgb_uint8, faces_or_analyzer, regions=DEFAULT_REGIONS, which="largest", index=0,
                   grow=0.0, grow_unit="px"|"percent", feather=0.0, fill_holes=True,
                   parser=None) -> (H, W) float32 in [0, 1]``
    (in ``continuity.faces.masks``; re-exported here.) ``faces_or_analyzer`` is a FaceAnalyzer (it
    detects and parses) or a list of Face already detected on this image (then ``parser`` gives
    the parser, default: the built-in one). ``which``: "largest", "most_confident", "index"
    (uses ``index``, largest first) or "all". ``regions``: any of REGIONS below, or "face" (= skin,
    brows, eyes, nose, mouth). No face: an all-zero mask. ``grow`` < 0 shrinks; in "percent" it is
    a per cent of the face box size.

``person_mask(rgb_uint8) -> (H, W) float32``  MediaPipe selfie segmentation (soft, 0-1).

``head_pose(face) -> (yaw, pitch, roll)`` degrees, from the landmarks (in ``continuity.faces.pose``).
    yaw > 0: the face turns toward image right; pitch > 0: looking up; roll > 0: clockwise tilt.

Region names: skin, brows, eyes, nose, mouth, ears, hair, beard, neck, glasses, hat.
"""
from __future__ import annotations

import threading
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from ..errors import ContinuityError, MissingModelError
from .base import Face, FaceDetector, FaceEmbedder, as_uint8_rgb

REGIONS = ("skin", "brows", "eyes", "nose", "mouth", "ears", "hair", "beard", "neck", "glasses", "hat")
FACE_PARTS = ("skin", "brows", "eyes", "nose", "mouth")
DEFAULT_REGIONS = FACE_PARTS + ("ears", "hair", "beard")
BACKENDS = ("mediapipe", "dlib", "retinaface", "insightface")
PARSERS = ("auto", "mediapipe", "landmarks", "bisenet")

__all__ = [
    "Face", "FaceDetector", "FaceEmbedder", "as_uint8_rgb", "REGIONS", "FACE_PARTS", "DEFAULT_REGIONS",
    "BACKENDS", "get_detector", "get_parser", "load_analyzer", "FaceAnalyzer", "face_region_mask",
    "person_mask", "head_pose", "select_faces", "mediapipe_available",
]

_lock = threading.RLock()
_detectors: dict[tuple, FaceDetector] = {}
_parsers: dict[tuple, object] = {}


def mediapipe_available() -> bool:
    from . import mediapipe_backend
    return mediapipe_backend.available()


def _key(name, device, models_dir, opts):
    return (name, str(device), str(models_dir or ""), tuple(sorted(opts.items())))


def get_detector(name: str = "dlib", device: str = "cpu", models_dir: str | None = None, **opts) -> FaceDetector:
    """A cached face detector: "dlib", "mediapipe", "retinaface" (facexlib) or "insightface"."""
    key = _key(name, device, models_dir, opts)
    with _lock:
        det = _detectors.get(key)
        if det is not None:
            return det
        if name == "dlib":
            from .dlib_backend import DlibDetector
            det = DlibDetector(**opts)
        elif name == "mediapipe":
            from .mediapipe_backend import MediaPipeDetector
            det = MediaPipeDetector(**opts)
        elif name == "retinaface":
            from .facexlib_backend import RetinaFaceDetector
            det = RetinaFaceDetector(device=device, models_dir=models_dir, **opts)
        elif name == "insightface":
            from .insightface_backend import InsightFaceDetector
            det = InsightFaceDetector(device=device, models_dir=models_dir, **opts)
        else:
            raise ContinuityError(f"unknown face backend '{name}'; choose one of {', '.join(BACKENDS)}",
                                  input="backend")
        _detectors[key] = det
        return det


def get_parser(name: str = "auto", device: str = "cpu", models_dir: str | None = None, **opts):
    """A cached region parser: "mediapipe" (built-in head mask), "landmarks" (68/mesh points only)
    or "bisenet" (facexlib parsing network). "auto": mediapipe when installed, else landmarks."""
    if name == "auto":
        name = "mediapipe" if mediapipe_available() else "landmarks"
    key = _key(name, device, models_dir, opts)
    with _lock:
        p = _parsers.get(key)
        if p is not None:
            return p
        if name in ("mediapipe", "landmarks"):
            from .masks import BuiltinParser
            p = BuiltinParser(use_mediapipe=(name == "mediapipe"), **opts)
        elif name == "bisenet":
            from .facexlib_backend import BiSeNetParser
            p = BiSeNetParser(device=device, models_dir=models_dir, **opts)
        else:
            raise ContinuityError(f"unknown region parser '{name}'; choose one of {', '.join(PARSERS)}",
                                  input="parser")
        _parsers[key] = p
        return p


@dataclass
class FaceAnalyzer:
    """A loaded face-analysis backend: what the FACE_MODEL socket carries."""
    backend: str
    detector: FaceDetector
    parser: Any
    embedder_name: str = "auto"
    device: str = "cpu"
    models_dir: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.parser.regions)

    def detect(self, rgb: np.ndarray, image_index: int = 0) -> list[Face]:
        faces = self.detector.detect(as_uint8_rgb(rgb))
        for f in faces:
            f.image_index = image_index
        return faces

    def parse(self, rgb: np.ndarray, face: Face, faces: list[Face] | None = None) -> dict[str, np.ndarray]:
        from .masks import limit_to_head
        return limit_to_head(self.parser.parse(as_uint8_rgb(rgb), face, faces=faces), face, faces)

    def embedder(self):
        """The identity embedder, created on first use by ``continuity.faces.embedders``."""
        try:
            from . import embedders
        except ImportError as exc:
            raise MissingModelError("the identity embedders (continuity.faces.embedders) are not available",
                                    input="face_model") from exc
        name = self.embedder_name
        models_dir = self.models_dir if self.backend == "insightface" else None
        return embedders.get_embedder(name, device=self.device, models_dir=models_dir)

    def __repr__(self) -> str:  # shown in ComfyUI's debug output
        return (f"FaceAnalyzer(backend={self.backend!r}, parser={getattr(self.parser, 'name', '?')!r}, "
                f"embedder={self.embedder_name!r}, device={self.device!r})")


def load_analyzer(backend: str = "mediapipe", device: str = "cpu", models_dir: str | None = None,
                  parser: str = "auto", embedder: str = "auto", detector_options: dict | None = None,
                  parser_models_dir: str | None = None) -> FaceAnalyzer:
    """Detector + parser (+ embedder name), all cached per process. ``parser_models_dir``: where the
    parser's weights are (default ``models_dir``)."""
    det = get_detector(backend, device=device, models_dir=models_dir, **(detector_options or {}))
    par = get_parser(parser, device=device, models_dir=parser_models_dir or models_dir)
    return FaceAnalyzer(backend=backend, detector=det, parser=par, embedder_name=embedder,
                        device=device, models_dir=models_dir)


def face_region_mask(*args, **kwargs):
    from .masks import face_region_mask as impl
    return impl(*args, **kwargs)


def person_mask(rgb: np.ndarray) -> np.ndarray:
    from .mediapipe_backend import person_mask as impl
    return impl(rgb)


def head_pose(face: Face) -> tuple[float, float, float]:
    from .pose import head_pose as impl
    return impl(face)


def select_faces(faces: list[Face], which: str = "largest", index: int = 0) -> list[Face]:
    from .masks import select_faces as impl
    return impl(faces, which, index)
