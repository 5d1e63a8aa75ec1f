"""The built-in dlib backend: HOG face detector and 5/68-point landmarks (offline, CPU).

Model files come from the ``face-recognition-models`` PyPI package. That package is located with
``importlib.util.find_spec`` and never imported: its ``__init__`` imports ``pkg_resources``, which
new setuptools no longer ship.

Loaded dlib objects are cached per process (:func:`shape_predictor`, :func:`face_recognition_model`,
:func:`hog_detector`) so that the detector and the identity embedder (``embedders.py``) share them.
"""
from __future__ import annotations

import importlib.util
import math
import os
import threading

import numpy as np

from ..errors import MissingModelError
from .base import Face, as_uint8_rgb

MODEL_FILES = {
    "5": "shape_predictor_5_face_landmarks.dat",
    "68": "shape_predictor_68_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
    "mmod": "mmod_human_face_detector.dat",
}

# Order of Face.landmarks5 for every backend of this pack (the ArcFace / insightface order):
LANDMARKS5_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # image left / right

_lock = threading.RLock()
_cache: dict[str, object] = {}


def _dlib():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingModelError(
            "dlib is not installed: install the 'dlib-bin' package (pip install dlib-bin) "
            "or choose the mediapipe backend", input="backend") from exc
    return dlib


def models_folder() -> str:
    """The folder holding the dlib model files of ``face-recognition-models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise MissingModelError(
            "the dlib model files are missing: install the 'face-recognition-models' package "
            "(pip install face-recognition-models)", input="backend")
    return os.path.join(os.path.dirname(spec.origin), "models")


def model_path(kind: str) -> str:
    """Path of a dlib model file: kind is "5", "68", "resnet" or "mmod"."""
    path = os.path.join(models_folder(), MODEL_FILES[kind])
    if not os.path.isfile(path):
        raise MissingModelError(
            f"the dlib model file '{MODEL_FILES[kind]}' is missing from {os.path.dirname(path)}: "
            "reinstall 'face-recognition-models'", input="backend")
    return path


def _cached(key: str, make):
    with _lock:
        obj = _cache.get(key)
        if obj is None:
            obj = make()
            _cache[key] = obj
        return obj


def hog_detector():
    """dlib's frontal HOG face detector (one per process)."""
    return _cached("hog", lambda: _dlib().get_frontal_face_detector())


def shape_predictor(kind: str = "68"):
    """dlib shape predictor "5" or "68" (one per process)."""
    if kind not in ("5", "68"):
        raise ValueError(f"unknown shape predictor {kind!r}")
    return _cached(f"sp{kind}", lambda: _dlib().shape_predictor(model_path(kind)))


def face_recognition_model():
    """dlib's 128-D ResNet face recognition model (one per process), for the identity embedder."""
    return _cached("resnet", lambda: _dlib().face_recognition_model_v1(model_path("resnet")))


def dlib_rect(box) -> object:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return _dlib().rectangle(x0, y0, x1, y1)


def full_object_detection(rgb: np.ndarray, face: Face, kind: str = "5"):
    """A dlib ``full_object_detection`` for ``face`` (what ``compute_face_descriptor`` wants).

    Reuses the landmarks already on the face when the detector stored them (``extra['dlib5']``),
    otherwise runs the cached shape predictor on the face box.
    """
    dlib = _dlib()
    key = f"dlib{kind}"
    pts = face.extra.get(key)
    rect = dlib_rect(face.box)
    if pts is not None:
        return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
    return shape_predictor(kind)(as_uint8_rgb(rgb), rect)


def _shape_to_np(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def landmarks5_from_68(p68: np.ndarray) -> np.ndarray:
    """The 5 points (eyes, nose tip, mouth corners; image left first) from iBUG 68 points."""
    return np.stack([
        p68[36:42].mean(0), p68[42:48].mean(0), p68[30], p68[48], p68[54],
    ]).astype(np.float32)


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    import cv2
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class DlibDetector:
    """HOG detector + 68-point landmarks.

    Large images are detected on a downscaled copy (longest side ``max_side``) and the boxes mapped
    back; landmarks are always fitted on the full-size image. Small images are upsampled by dlib
    (``upsample`` times; "auto" upsamples once when the working copy is at most 800 px) so faces
    down to about 40 px are found.
    """

    name = "dlib"

    def __init__(self, max_side: int = 1024, upsample: int | str = "auto", landmarks: str = "68",
                 min_score: float = -0.2):
        self.max_side = int(max_side)
        self.upsample = upsample
        self.landmarks = landmarks
        self.min_score = float(min_score)

    def _upsample_for(self, work_shape) -> int:
        if self.upsample != "auto":
            return int(self.upsample)
        return 1 if max(work_shape[:2]) <= 800 else 0

    def detect_boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        rgb = as_uint8_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w)) if self.max_side > 0 else 1.0
        work = _resize(rgb, scale) if scale < 1.0 else rgb
        det = hog_detector()
        with _lock:  # dlib objects are not documented as thread-safe
            rects, scores, _ = det.run(work, self._upsample_for(work.shape), self.min_score)
        out = []
        for r, s in zip(rects, scores):
            box = (r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale)
            out.append((box, float(s)))
        return out

    def landmarks_for(self, rgb: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        """(68, 2) and (5, 2) landmarks for one face box on the full-size image."""
        rgb = as_uint8_rgb(rgb)
        with _lock:
            shape = shape_predictor("68")(rgb, dlib_rect(box))
        p68 = _shape_to_np(shape)
        return p68, landmarks5_from_68(p68)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = as_uint8_rgb(rgb)
        faces = []
        for box, score in self.detect_boxes(rgb):
            # HOG scores are SVM margins (about -0.5 .. 3); squash to 0-1 for display and ranking.
            conf = 1.0 / (1.0 + math.exp(-2.0 * score))
            face = Face(box=box, score=conf, backend="dlib", extra={"hog_score": score,
                                                                    "landmarks5_order": LANDMARKS5_ORDER})
            if self.landmarks:
                face.landmarks68, face.landmarks5 = self.landmarks_for(rgb, box)
            faces.append(face)
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
