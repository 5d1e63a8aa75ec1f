"""Identity embedding models: face crop -> L2-normalised vector, each with its own threshold.

Backends (``get_embedder(name)``):

- ``dlib``: dlib's 128-D ResNet (``dlib_face_recognition_resnet_model_v1.dat``) aligned with the
  5-point shape predictor, both shipped by the ``face_recognition_models`` PyPI package (found
  with ``importlib.util.find_spec``; the package itself is never imported). Always available.
- ``arcface``: insightface's ArcFace (``w600k_r50.onnx`` from the ``buffalo_l`` pack, or any
  ArcFace ONNX with a 112x112 input) through ``onnxruntime``.
- ``facenet``, ``openface``, ``deepid``: the models of the paper, from the Keras weight files
  DeepFace publishes (``facenet_weights.h5``, ``openface_weights.h5``,
  ``deepid_keras_weights.h5``), run through the ``deepface`` package (needs TensorFlow).

Thresholds are cosine *similarities* (1 - DeepFace's published cosine distance thresholds), never
tuned here: a pair at or above the threshold reads "same person" for that model.

Nothing is ever downloaded: a missing file gives a :class:`MissingModelError` naming the file,
where to get it and the folder to put it in.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import ContinuityError, MissingModelError
from .base import Face, as_uint8_rgb

# name -> (dim, cosine-similarity threshold, source of the threshold)
MODELS: dict[str, dict] = {
    "dlib": {"dim": 128, "threshold": 0.93, "label": "dlib ResNet 128-D",
             "source": "DeepFace's Dlib cosine distance threshold 0.07"},
    "arcface": {"dim": 512, "threshold": 0.32, "label": "ArcFace (insightface)",
                "source": "DeepFace's ArcFace cosine distance threshold 0.68"},
    "facenet": {"dim": 128, "threshold": 0.60, "label": "Facenet (DeepFace)",
                "source": "DeepFace's Facenet cosine distance threshold 0.40"},
    "openface": {"dim": 128, "threshold": 0.90, "label": "OpenFace (DeepFace)",
                 "source": "DeepFace's OpenFace cosine distance threshold 0.10"},
    "deepid": {"dim": 160, "threshold": 0.985, "label": "DeepID (DeepFace)",
               "source": "DeepFace's DeepID cosine distance threshold 0.015"},
}
NAMES = tuple(MODELS)

# Where users put the weight files, relative to ComfyUI's models folder.
ARCFACE_CANDIDATES = ("insightface/models/buffalo_l/w600k_r50.onnx", "insightface/w600k_r50.onnx",
                      "arcface/w600k_r50.onnx", "insightface/models/antelopev2/glintr100.onnx")
DEEPFACE_FILES = {"facenet": "facenet_weights.h5", "openface": "openface_weights.h5",
                  "deepid": "deepid_keras_weights.h5"}
DEEPFACE_DIRS = ("deepface", "deepface/weights", "deepface/.deepface/weights")
DEEPFACE_URL = "https://github.com/serengil/deepface_models/releases"
DEEPFACE_INPUT = {"facenet": (160, 160), "openface": (96, 96), "deepid": (47, 55)}  # (w, h)


def l2_normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- dlib

def dlib_models_dir() -> str | None:
    """The ``models`` folder of the installed ``face_recognition_models`` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _dlib_file(name: str, models_dir: str | None) -> str:
    places = []
    if models_dir:
        places += [os.path.join(models_dir, "dlib", name), os.path.join(models_dir, "face_recognition", name)]
    pkg = dlib_models_dir()
    if pkg:
        places.append(os.path.join(pkg, name))
    for p in places:
        if os.path.isfile(p):
            return p
    raise MissingModelError(
        f"dlib model file '{name}' not found. Install it with 'pip install face-recognition-models' "
        f"or put it (from http://dlib.net/files/) in {os.path.join(models_dir or '<ComfyUI>/models', 'dlib')}",
        input="model")


_lock = threading.RLock()
_shape_predictors: dict[str, object] = {}


def _shared_dlib_backend(name: str, models_dir: str | None):
    """The face module's cached dlib objects, when our file is the packaged one (no second copy)."""
    pkg = dlib_models_dir()
    if pkg and os.path.dirname(_dlib_file(name, models_dir)) == pkg:
        try:
            from . import dlib_backend  # the face detector's shared loaders
        except ImportError:
            return None
        return dlib_backend
    return None


def dlib_shape_predictor(points: int = 5, models_dir: str | None = None):
    """One shared dlib shape predictor per file and process (shared with the face detector)."""
    name = f"shape_predictor_{points}_face_landmarks.dat"
    shared = _shared_dlib_backend(name, models_dir)
    if shared is not None:
        return shared.shape_predictor(str(points))
    path = _dlib_file(name, models_dir)
    with _lock:
        if path not in _shape_predictors:
            import dlib
            _shape_predictors[path] = dlib.shape_predictor(path)
        return _shape_predictors[path]


def _rect(face: Face, shape: tuple[int, int]):
    import dlib
    h, w = shape
    x0, y0, x1, y1 = face.box
    x0, y0 = int(round(max(0, min(w - 1, x0)))), int(round(max(0, min(h - 1, y0))))
    x1, y1 = int(round(max(x0 + 1, min(w, x1)))), int(round(max(y0 + 1, min(h, y1))))
    return dlib.rectangle(x0, y0, x1, y1)


class DlibResNet128:
    """dlib's face recognition ResNet: 99.38 % on LFW, 128-D, face aligned by 5 landmarks."""

    name = "dlib"
    dim = 128
    threshold = MODELS["dlib"]["threshold"]
    batchable = True

    def __init__(self, models_dir: str | None = None):
        import dlib
        self._models_dir = models_dir
        fname = "dlib_face_recognition_resnet_model_v1.dat"
        self.model_path = _dlib_file(fname, models_dir)
        shared = _shared_dlib_backend(fname, models_dir)
        self._net = shared.face_recognition_model() if shared else dlib.face_recognition_model_v1(self.model_path)
        self._sp = dlib_shape_predictor(5, models_dir)
        self._run_lock = threading.Lock()

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """150x150 aligned face chips (dlib's own alignment, padding 0.25)."""
        import dlib
        rgb = as_uint8_rgb(rgb)
        out = []
        for f in faces:
            rect = _rect(f, rgb.shape[:2])
            if f.landmarks68 is not None:   # the detector's 68 points: no second landmark fit
                shape = dlib.full_object_detection(
                    rect, [dlib.point(int(round(x)), int(round(y))) for x, y in np.asarray(f.landmarks68)])
            else:
                shape = self._sp(rgb, rect)
            out.append(dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        return out

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        with self._run_lock:  # dlib's net is not re-entrant
            vecs = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return l2_normalise(np.array([np.array(v) for v in vecs]))

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_chips(self.chips(rgb, faces))


# --------------------------------------------------------------------------- shared alignment

# insightface's 112x112 ArcFace template: left eye, right eye (as seen), nose, mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def five_points(rgb: np.ndarray, face: Face, models_dir: str | None = None) -> np.ndarray:
    """Eye centres, nose tip and mouth corners (image-left first), as ArcFace's template wants."""
    order = (face.extra or {}).get("landmarks5_order")
    if face.landmarks5 is not None and order and tuple(order)[:2] == ("left_eye", "right_eye"):
        return np.asarray(face.landmarks5, np.float32)
    lm = face.landmarks68
    if lm is None:
        sp = dlib_shape_predictor(68, models_dir)
        s = sp(as_uint8_rgb(rgb), _rect(face, rgb.shape[:2]))
        lm = np.array([[p.x, p.y] for p in s.parts()], np.float32)
    lm = np.asarray(lm, np.float32)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]).astype(np.float32)


def align_crop(rgb: np.ndarray, points5: np.ndarray, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    import cv2
    tmpl = ARCFACE_TEMPLATE * np.array([size[0] / 112.0, size[1] / 112.0], np.float32)
    m, _ = cv2.estimateAffinePartial2D(points5.astype(np.float32), tmpl, method=cv2.LMEDS)
    if m is None:
        raise ContinuityError("could not align the face (degenerate landmarks)", input="images")
    return cv2.warpAffine(as_uint8_rgb(rgb), m, size, borderValue=0.0)


def deepface_crop(rgb: np.ndarray, face: Face, size: tuple[int, int], models_dir: str | None = None) -> np.ndarray:
    """DeepFace's way: turn the image so the eyes are level, crop the face box, resize keeping the
    aspect ratio and pad with black to ``size`` (w, h)."""
    import cv2
    rgb = as_uint8_rgb(rgb)
    pts = five_points(rgb, face, models_dir)
    (lx, ly), (rx, ry) = pts[0], pts[1]
    angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
    cx, cy = face.center
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, 1.0)
    turned = cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), borderValue=0)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = face.box
    x0, y0 = int(max(0, round(x0))), int(max(0, round(y0)))
    x1, y1 = int(min(w, round(x1))), int(min(h, round(y1)))
    crop = turned[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)]
    tw, th = size
    f = min(tw / crop.shape[1], th / crop.shape[0])
    nw, nh = max(1, int(crop.shape[1] * f)), max(1, int(crop.shape[0] * f))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((th, tw, 3), np.uint8)
    oy, ox = (th - nh) // 2, (tw - nw) // 2
    out[oy:oy + nh, ox:ox + nw] = small
    return out


# --------------------------------------------------------------------------- ArcFace (ONNX)

def find_arcface(models_dir: str | None) -> str | None:
    if not models_dir:
        return None
    for rel in ARCFACE_CANDIDATES:
        p = os.path.join(models_dir, rel)
        if os.path.isfile(p):
            return p
    return None


class ArcFaceONNX:
    name = "arcface"
    dim = 512
    threshold = MODELS["arcface"]["threshold"]
    batchable = True

    def __init__(self, models_dir: str | None = None, device: str = "cpu", path: str | None = None):
        path = path or find_arcface(models_dir)
        if path is None:
            raise MissingModelError(
                "ArcFace weights not found: put 'w600k_r50.onnx' (from insightface's buffalo_l pack, "
                "https://github.com/deepinsight/insightface/releases, non-commercial licence) in "
                f"{os.path.join(models_dir or '<ComfyUI>/models', 'insightface', 'models', 'buffalo_l')}",
                input="model")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingModelError("ArcFace needs onnxruntime: pip install onnxruntime "
                                    "(or onnxruntime-gpu)", input="model") from exc
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.model_path = path
        self._models_dir = models_dir
        self._sess = ort.InferenceSession(path, providers=providers)
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        shape = inp.shape
        self.size = (int(shape[3]) if isinstance(shape[3], int) else 112,
                     int(shape[2]) if isinstance(shape[2], int) else 112)
        out_dim = self._sess.get_outputs()[0].shape[-1]
        self.dim = out_dim if isinstance(out_dim, int) else 512

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        return [align_crop(rgb, five_points(rgb, f, self._models_dir), self.size) for f in faces]

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        x = (np.stack(chips).astype(np.float32) - 127.5) / 127.5          # RGB, as insightface feeds it
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return l2_normalise(self._sess.run(None, {self._input: x})[0])

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_chips(self.chips(rgb, faces))


# --------------------------------------------------------------------------- DeepFace models

def find_deepface(name: str, models_dir: str | None) -> str | None:
    if not models_dir:
        return None
    for d in DEEPFACE_DIRS:
        p = os.path.join(models_dir, d, DEEPFACE_FILES[name])
        if os.path.isfile(p):
            return p
    return None


class DeepFaceKeras:
    """Facenet / OpenFace / DeepID as DeepFace builds them, from its published weight files.

    DeepFace reads ``$DEEPFACE_HOME/.deepface/weights/<file>``; we point it at a private folder
    holding a link to the user's file, so it never downloads anything.
    """

    batchable = False

    def __init__(self, name: str, models_dir: str | None = None):
        self.name = name
        self.dim = MODELS[name]["dim"]
        self.threshold = MODELS[name]["threshold"]
        self._models_dir = models_dir
        path = find_deepface(name, models_dir)
        if path is None:
            raise MissingModelError(
                f"{MODELS[name]['label']} weights not found: put '{DEEPFACE_FILES[name]}' (from {DEEPFACE_URL}, "
                f"MIT) in {os.path.join(models_dir or '<ComfyUI>/models', 'deepface')}", input="model")
        try:
            from deepface import DeepFace
        except Exception as exc:  # ImportError, or TensorFlow failing to start
            raise MissingModelError(
                f"{MODELS[name]['label']}: the weight file is there but running it needs the 'deepface' "
                f"package with TensorFlow (pip install deepface tf-keras): {exc}", input="model") from exc
        self.model_path = path
        home = tempfile.mkdtemp(prefix="continuity-deepface-")
        wdir = os.path.join(home, ".deepface", "weights")
        os.makedirs(wdir)
        os.symlink(path, os.path.join(wdir, DEEPFACE_FILES[name]))
        os.environ["DEEPFACE_HOME"] = home
        from deepface import DeepFace
        label = {"facenet": "Facenet", "openface": "OpenFace", "deepid": "DeepID"}[name]
        try:
            self._model = DeepFace.build_model(model_name=label, task="facial_recognition")
        except TypeError:  # older deepface: build_model(model_name)
            self._model = DeepFace.build_model(label)

    def chips(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        return [deepface_crop(rgb, f, DEEPFACE_INPUT[self.name], self._models_dir) for f in faces]

    def embed_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """DeepFace's default pipeline: BGR, values in [0, 1] ("base" normalisation)."""
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        x = np.ascontiguousarray(np.stack(chips).astype(np.float32)[..., ::-1] / 255.0)
        net = getattr(self._model, "model", self._model)   # newer deepface wraps the Keras model
        out = net(x, training=False)
        return l2_normalise(np.asarray(out.numpy() if hasattr(out, "numpy") else out))

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        return self.embed_chips(self.chips(rgb, faces))


# --------------------------------------------------------------------------- registry

@dataclass
class Availability:
    name: str
    label: str
    available: bool
    threshold: float
    reason: str       # where the file is, or why it cannot run


def availability(models_dir: str | None = None) -> list[Availability]:
    """Which backends can run here, and why not (without loading any model)."""
    out = []
    for name, meta in MODELS.items():
        if name == "dlib":
            try:
                ok, why = True, _dlib_file("dlib_face_recognition_resnet_model_v1.dat", models_dir)
            except MissingModelError as exc:
                ok, why = False, exc.message
        elif name == "arcface":
            p = find_arcface(models_dir)
            has_rt = importlib.util.find_spec("onnxruntime") is not None
            ok = bool(p) and has_rt
            why = str(p) if ok else ("no ArcFace ONNX file in models/insightface" if not p else "onnxruntime not installed")
        else:
            p = find_deepface(name, models_dir)
            has_df = importlib.util.find_spec("deepface") is not None
            ok = bool(p) and has_df
            why = str(p) if ok else (f"no {DEEPFACE_FILES[name]} in models/deepface" if not p else "deepface/TensorFlow not installed")
        out.append(Availability(name, meta["label"], ok, meta["threshold"], why))
    return out


_cache: dict[tuple, object] = {}


def get_embedder(name: str, models_dir: str | None = None, device: str = "cpu"):
    """The embedder ``name`` (see :data:`MODELS`), loaded once per process and arguments."""
    name = name.lower().strip()
    if name in ("auto", "default", "builtin", "dlib-resnet128"):
        name = "dlib"
    if name not in MODELS:
        raise ContinuityError(f"unknown identity model '{name}'; choose one of {', '.join(MODELS)}", input="model")
    key = (name, os.path.realpath(models_dir) if models_dir else None, device)
    with _lock:
        if key not in _cache:
            if name == "dlib":
                _cache[key] = DlibResNet128(models_dir)
            elif name == "arcface":
                _cache[key] = ArcFaceONNX(models_dir, device)
            else:
                _cache[key] = DeepFaceKeras(name, models_dir)
        return _cache[key]


def register_embedder(embedder, models_dir: str | None = None, device: str = "cpu") -> None:
    """Put an already-built embedder in the cache (tests, or a backend built elsewhere)."""
    key = (embedder.name, os.path.realpath(models_dir) if models_dir else None, device)
    with _lock:
        _cache[key] = embedder
