"""Pro detector from insightface: SCRFD (``det_10g.onnx`` of the buffalo_l pack, or
``scrfd_10g_bnkps.onnx`` of antelopev2) run with onnxruntime; no insightface package needed.

Weights go in ComfyUI's ``models/insightface/models/<pack>/`` (registered by the node layer), the
layout insightface itself uses. The insightface model packs are for non-commercial research use only.
"""
from __future__ import annotations

import os
import threading
import zipfile
from typing import Any

import numpy as np

from ..errors import MissingModelError
from .base import Face, as_uint8_rgb
from .dlib_backend import LANDMARKS5_ORDER
from .weights import ensure_file
from .boxes import nms as _nms

PACKS = {
    "buffalo_l": ("det_10g.onnx", "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"),
    "antelopev2": ("scrfd_10g_bnkps.onnx",
                   "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip"),
}
LICENCE = "insightface model packs: non-commercial research use only"
_lock = threading.RLock()
_sessions: dict[tuple, Any] = {}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingModelError("the insightface backend needs onnxruntime: pip install onnxruntime "
                                "(or onnxruntime-gpu), or choose the mediapipe or dlib backend", input="backend") from exc
    return onnxruntime


def model_file(models_dir: str | None, pack: str = "buffalo_l") -> str:
    """Path of the SCRFD detector of ``pack``; fetches the pack's zip when online."""
    if not models_dir:
        raise MissingModelError("no insightface model folder is configured", input="backend")
    fname, url = PACKS[pack]
    folder = os.path.join(models_dir, "models", pack)
    path = os.path.join(folder, fname)
    if os.path.isfile(path):
        return path
    zpath = ensure_file(os.path.join(models_dir, "models"), f"{pack}.zip", url, licence=LICENCE)
    with zipfile.ZipFile(zpath) as z:
        member = next((n for n in z.namelist() if n.endswith("/" + fname) or n == fname), None)
        if member is None:
            raise MissingModelError(f"'{fname}' is not in {zpath}; put it in {folder}", input="backend")
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".part"
        with z.open(member) as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        os.replace(tmp, path)
    return path


class InsightFaceDetector:
    """SCRFD through onnxruntime (strides 8/16/32, 2 anchors, 5 key points), insightface's decoding."""

    name = "insightface"

    def __init__(self, device: str = "cpu", models_dir: str | None = None, pack: str = "buffalo_l",
                 det_size: int = 640, threshold: float = 0.5, nms: float = 0.4, model_path: str | None = None):
        ort = _ort()
        path = model_path or model_file(models_dir, pack)
        key = (path, device)
        with _lock:
            if key not in _sessions:
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
                    else ["CPUExecutionProvider"]
                providers = [p for p in providers if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
                _sessions[key] = ort.InferenceSession(path, providers=providers)
        self.session = _sessions[key]
        self.input_name = self.session.get_inputs()[0].name
        n_out = len(self.session.get_outputs())
        if n_out not in (6, 9):
            raise MissingModelError(f"{path} is not an SCRFD detector ({n_out} outputs)", input="backend")
        self.fmc, self.kps = 3, n_out == 9
        self.strides = (8, 16, 32)
        self.det_size, self.threshold, self.nms = det_size, threshold, nms

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2
        rgb = as_uint8_rgb(rgb)
        h, w = rgb.shape[:2]
        size = self.det_size
        scale = size / max(h, w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {self.input_name: blob})
        boxes_l: list[np.ndarray] = []
        scores_l: list[np.ndarray] = []
        kpss: list[np.ndarray] = []
        for i, stride in enumerate(self.strides):
            sc = outs[i].reshape(-1)
            bb = outs[i + self.fmc].reshape(-1, 4) * stride
            gh, gw = size // stride, size // stride
            centers = np.stack(list(np.mgrid[:gh, :gw][::-1]), -1).reshape(-1, 2).astype(np.float32) * stride
            centers = np.repeat(centers, len(sc) // len(centers), axis=0)
            pos = np.nonzero(sc >= self.threshold)[0]
            b = np.concatenate([centers - bb[:, :2], centers + bb[:, 2:]], 1)
            boxes_l.append(b[pos])
            scores_l.append(sc[pos])
            if self.kps:
                k = outs[i + 2 * self.fmc].reshape(-1, 5, 2) * stride + centers[:, None]
                kpss.append(k[pos])
        boxes = np.concatenate(boxes_l) / scale
        scores = np.concatenate(scores_l)
        kps = np.concatenate(kpss) / scale if self.kps else None
        faces = []
        for i in _nms(boxes, scores, self.nms):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            x0, x1 = min(max(0.0, x0), w), min(max(0.0, x1), w)
            y0, y1 = min(max(0.0, y0), h), min(max(0.0, y1), h)
            if x1 - x0 < 1 or y1 - y0 < 1:        # in the letterbox padding: not on the image
                continue
            faces.append(Face(box=(x0, y0, x1, y1),
                              score=float(scores[i]), landmarks5=None if kps is None else kps[i].astype(np.float32),
                              backend="insightface", extra={"landmarks5_order": LANDMARKS5_ORDER}))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
