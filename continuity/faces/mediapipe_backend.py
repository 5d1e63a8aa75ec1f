"""The built-in MediaPipe backend: face detection (short/full range), the 478-point face mesh and
person (selfie) segmentation. Needs ``mediapipe==0.10.21`` (the last release that bundles its
models; install it with ``--no-deps``). Without it, :func:`available` is False and every entry
point raises a :class:`MissingModelError` that says how to install it.

MediaPipe graphs are created once per process and used under a lock (they are not re-entrant).
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import MissingModelError
from .base import Face, as_uint8_rgb
from .boxes import iou
from .dlib_backend import LANDMARKS5_ORDER

INSTALL_HINT = ("MediaPipe is not installed: the built-in face mesh, head mask and person segmentation need it. "
                "Install it with: pip install --no-deps mediapipe==0.10.21 (Python 3.9-3.12; there is no "
                "wheel for Python 3.13), or choose the dlib backend with the 'landmarks' parser")

_lock = threading.RLock()
_graphs: dict[tuple, object] = {}
_mp = None
_mp_error: Exception | None = None

# Face mesh indices (MediaPipe canonical face model).
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]    # subject's left
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_BROW = [276, 283, 282, 295, 285, 300, 293, 334, 296, 336]
RIGHT_BROW = [46, 53, 52, 65, 55, 70, 63, 105, 66, 107]
LIPS_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
NOSE = [168, 193, 245, 188, 174, 217, 126, 142, 129, 98, 97, 2, 326, 327, 358, 371, 355, 437, 399, 412, 465, 417]
JAW = [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454]
IRIS_RIGHT, IRIS_LEFT = 468, 473          # iris centres (refined mesh)
CHIN, FOREHEAD_TOP, NOSE_TIP = 152, 10, 1
CHEEK_RIGHT, CHEEK_LEFT = 234, 454        # widest points of the face, by the ears
MOUTH_RIGHT, MOUTH_LEFT = 61, 291


def _import():
    global _mp, _mp_error
    if _mp is None and _mp_error is None:
        try:
            import mediapipe
            _ = mediapipe.solutions.face_detection
            _mp = mediapipe
        except Exception as exc:  # ImportError, or a broken install (missing protobuf, ...)
            _mp_error = exc
    if _mp is None:
        raise MissingModelError(f"{INSTALL_HINT} ({type(_mp_error).__name__}: {_mp_error})", input="backend")
    return _mp


def available() -> bool:
    try:
        _import()
        return True
    except MissingModelError:
        return False


def _graph(kind: str, option: int):
    key = (kind, option)
    mp = _import()
    with _lock:
        g = _graphs.get(key)
        if g is None:
            if kind == "detect":
                g = mp.solutions.face_detection.FaceDetection(model_selection=option, min_detection_confidence=0.3)
            elif kind == "mesh":
                g = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                                    min_detection_confidence=0.2)
            elif kind == "segment":
                g = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=option)
            _graphs[key] = g
        return g


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2
    return cv2.resize(rgb, (max(1, w), max(1, h)), interpolation=cv2.INTER_AREA)


def detect_raw(rgb: np.ndarray, model: int) -> list[tuple[tuple, float, np.ndarray]]:
    """MediaPipe face detection: (box, score, 6 keypoints (6, 2) in pixels) per face."""
    rgb = as_uint8_rgb(rgb)
    h, w = rgb.shape[:2]
    g = _graph("detect", model)
    with _lock:
        res = g.process(rgb)
    out = []
    for d in res.detections or []:
        bb = d.location_data.relative_bounding_box
        box = (bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h)
        kp = np.array([(k.x * w, k.y * h) for k in d.location_data.relative_keypoints], dtype=np.float32)
        out.append((box, float(d.score[0]), kp))
    return out


def face_mesh(rgb: np.ndarray, box, margin: float = 0.6, work_size: int = 192) -> np.ndarray | None:
    """The 478-point mesh of the face in ``box`` as (478, 3) pixels (z in pixels too), or None.

    The mesh runs on a square crop around the box (``margin`` of the box size on each side),
    resized to ``work_size``: fast on large images, and right for the face that was asked for.
    """
    rgb = as_uint8_rgb(rgb)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    sx0, sy0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    sx1, sy1 = sx0 + int(round(side)), sy0 + int(round(side))
    # Pad where the crop leaves the image (faces at the border), so the face keeps its place.
    pad = ((max(0, -sy0), max(0, sy1 - h)), (max(0, -sx0), max(0, sx1 - w)), (0, 0))
    crop = rgb[max(0, sy0):min(h, sy1), max(0, sx0):min(w, sx1)]
    if crop.size == 0:
        return None
    if any(p for pp in pad[:2] for p in pp):
        crop = np.pad(crop, pad, mode="constant")
    size = crop.shape[0]
    scale = work_size / size
    work = _resize(crop, work_size, work_size) if abs(scale - 1) > 1e-3 else np.ascontiguousarray(crop)
    g = _graph("mesh", 0)
    with _lock:
        res = g.process(work)
    if not res.multi_face_landmarks:
        return None
    lm = res.multi_face_landmarks[0].landmark
    pts = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32) * work_size / scale
    pts[:, 0] += sx0
    pts[:, 1] += sy0
    return pts


def landmarks5_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """The 5 points (eyes, nose tip, mouth corners; image left first) from the mesh."""
    a, b = mesh[IRIS_RIGHT, :2], mesh[IRIS_LEFT, :2]            # subject's right eye is on image left
    ml, mr = mesh[MOUTH_RIGHT, :2], mesh[MOUTH_LEFT, :2]
    if a[0] > b[0]:
        a, b = b, a
    if ml[0] > mr[0]:
        ml, mr = mr, ml
    return np.stack([a, b, mesh[NOSE_TIP, :2], ml, mr]).astype(np.float32)


def _landmarks5_from_keypoints(kp: np.ndarray) -> np.ndarray:
    """Approximate 5 points from MediaPipe's 6 detection keypoints (eyes, nose, mouth centre, ears)."""
    e1, e2 = (kp[0], kp[1]) if kp[0, 0] <= kp[1, 0] else (kp[1], kp[0])
    d = e2 - e1
    mouth = kp[3]
    return np.stack([e1, e2, kp[2], mouth - 0.4 * d, mouth + 0.4 * d]).astype(np.float32)


class MediaPipeDetector:
    """MediaPipe face detection with the short-range (faces within ~2 m) and full-range (small, far
    faces) models, plus the 478-point mesh for each face (``mesh=True``). "auto" runs the short-range
    model, then the full-range one unless a face at least 20 % of the image's short side was found,
    and merges both (non-maximum suppression)."""

    name = "mediapipe"

    def __init__(self, model: str = "auto", min_score: float = 0.5, mesh: bool = True, nms_iou: float = 0.3):
        if model not in ("auto", "short", "full"):
            raise MissingModelError(f"unknown MediaPipe detection model '{model}' (auto, short, full)", input="backend")
        _import()
        self.model = model
        self.min_score = float(min_score)
        self.mesh = mesh
        self.nms_iou = nms_iou

    def detect_boxes(self, rgb: np.ndarray):
        models = {"auto": (0, 1), "short": (0,), "full": (1,)}[self.model]
        found: list[tuple] = []
        short_side = min(rgb.shape[:2])
        for m in models:
            if self.model == "auto" and m == 1 and found and \
                    max(max(b[2] - b[0], b[3] - b[1]) for b, *_ in found) >= 0.2 * short_side:
                break  # a close-up: the full-range model (small, far faces) is not needed
            found += [(b, s, k, m) for b, s, k in detect_raw(rgb, m) if s >= self.min_score]
        found.sort(key=lambda t: t[1], reverse=True)
        keep: list[tuple] = []
        for cand in found:  # NMS over both models; keep the more confident box
            if all(iou(cand[0], k[0]) < self.nms_iou for k in keep):
                keep.append(cand)
        return keep

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = as_uint8_rgb(rgb)
        faces = []
        for box, score, kp, m in self.detect_boxes(rgb):
            face = Face(box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])), score=score, backend="mediapipe",
                        landmarks5=_landmarks5_from_keypoints(kp),
                        extra={"keypoints6": kp, "model": "short" if m == 0 else "full",
                               "landmarks5_order": LANDMARKS5_ORDER})
            if self.mesh:
                add_mesh(rgb, face)
            faces.append(face)
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces


def add_mesh(rgb: np.ndarray, face: Face) -> bool:
    """Fit the mesh to ``face`` (if it has none yet) and refresh its 5 points. True if it has one."""
    if face.mesh is None:
        mesh = face_mesh(rgb, face.box)
        if mesh is None:
            return False
        face.mesh = mesh
        if face.landmarks68 is None:
            face.landmarks5 = landmarks5_from_mesh(mesh)
    return True


def _segment(rgb: np.ndarray, work_side: int, model: int) -> tuple[np.ndarray, int, int]:
    """The raw selfie-segmentation mask of a copy of longest side ``work_side``, and the image's (H, W)."""
    rgb = as_uint8_rgb(rgb)
    h, w = rgb.shape[:2]
    s = min(1.0, work_side / max(h, w))
    work = _resize(rgb, round(w * s), round(h * s)) if s < 1 else rgb
    g = _graph("segment", model)
    with _lock:
        res = g.process(work)
    return np.asarray(res.segmentation_mask, dtype=np.float32), h, w


def person_mask_small(rgb: np.ndarray, work_side: int = 256, model: int = 0):
    """Person segmentation on a copy of longest side ``work_side``: (mask, fx, fy), where the mask
    is (round(H * fy), round(W * fx)) float32 in [0, 1]."""
    m, h, w = _segment(rgb, work_side, model)
    m = np.clip(m, 0.0, 1.0)
    return m, m.shape[1] / w, m.shape[0] / h


def person_mask(rgb: np.ndarray, work_side: int = 512, model: int = 0) -> np.ndarray:
    """Soft person (selfie) segmentation, (H, W) float32 in [0, 1], at the image's full size.

    Runs on a copy whose longest side is ``work_side`` (the network itself works at 256x256),
    then is resized back.
    """
    import cv2
    m, h, w = _segment(rgb, work_side, model)
    if m.shape[:2] != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32, copy=False)
    return np.clip(m, 0.0, 1.0)
