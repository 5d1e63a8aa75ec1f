"""Video metrics of the MotionCharacter paper: identity over frames and motion intensity.

- :func:`identity_over_frames`: cosine similarity of each frame's face to the reference
  portraits, and the ID-consistency loss ``1 - mean cosine`` over the N frames with a face.
- :func:`motion_intensity`: optical flow between consecutive frames (OpenCV Farneback or DIS, no
  download; torchvision RAFT when its weights are present). Per frame pair the mean flow
  magnitude is the threshold and the intensity is the mean magnitude of the pixels above it; the
  clip's intensity is the average over pairs, optionally capped (the paper caps at 20).
- :func:`region_weights`: the paper's region weight map ``clip(f / 255 + 0.5, 1, 1.5)``, where
  ``f`` is the flow magnitude scaled to 0-255 per frame (moving regions weigh up to 1.5).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from .errors import ContinuityError, MissingModelError
from .faces.base import as_uint8_rgb

FLOW_METHODS = ("farneback", "dis", "raft_small", "raft_large")
RAFT_FILES = {
    "raft_small": ("raft_small_C_T_V2-01064c6d.pth", "raft_small_C_T-ee68ff14.pth"),
    "raft_large": ("raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft_large_C_T_V2-1bb1363a.pth"),
}
RAFT_FOLDER = "optical_flow"


# --------------------------------------------------------------------------- identity over frames

@dataclass
class IdentityOverFrames:
    per_frame: list[float | None]      # mean cosine to the references; None where no face
    per_reference: list[list[float] | None]
    face_found: list[bool]
    threshold: float
    model: str
    scores: object = None              # the ScoreSet behind it (for reports and selection)

    @property
    def n_scored(self) -> int:
        return sum(1 for v in self.per_frame if v is not None)

    @property
    def mean(self) -> float | None:
        vals = [v for v in self.per_frame if v is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def id_consistency_loss(self) -> float | None:
        """MotionCharacter's ID-consistency loss: 1 - mean cosine over the frames with a face."""
        m = self.mean
        return None if m is None else 1.0 - m

    def to_dict(self) -> dict:
        return {"model": self.model, "threshold": self.threshold, "frames": len(self.per_frame),
                "frames_with_face": self.n_scored, "mean_similarity": self.mean,
                "id_consistency_loss": self.id_consistency_loss, "per_frame": self.per_frame,
                "per_reference": self.per_reference, "face_found": self.face_found}


def identity_over_frames(frames: list[np.ndarray], references: list[np.ndarray], embedder, *,
                         policy: str = "largest", detector=None, cache=None,
                         reference_names: list[str] | None = None, progress=None) -> IdentityOverFrames:
    from .scoring.similarity import score_set
    s = score_set(references, frames, [embedder], name="frames", policy=policy, detector=detector,
                  cache=cache, reference_names=reference_names, progress=progress,
                  filenames=[f"frame {i}" for i in range(len(frames))])
    ms = s.models[embedder.name]
    per_ref = [None if not c.found else [float(v) for v in row] for c, row in zip(ms.candidates, ms.sims)]
    return IdentityOverFrames(ms.mean, per_ref, [c.found for c in ms.candidates], ms.threshold, embedder.name, s)


# --------------------------------------------------------------------------- optical flow

def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.cvtColor(as_uint8_rgb(rgb), cv2.COLOR_RGB2GRAY)


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    import cv2
    if scale >= 1.0:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)


_dis_local = threading.local()


def _flow_cv(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    import cv2
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                            poly_n=5, poly_sigma=1.2, flags=0)
    dis = getattr(_dis_local, "dis", None)
    if dis is None:
        dis = cv2.DISOpticalFlow_create(  # type: ignore[attr-defined]  # missing from the stubs
            cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        _dis_local.dis = dis
    return dis.calc(a, b, None)


_raft_cache: dict[tuple, object] = {}
_raft_lock = threading.Lock()


def find_raft(method: str, models_dir: str | None) -> str | None:
    if not models_dir:
        return None
    for d in (RAFT_FOLDER, "raft"):
        for f in RAFT_FILES[method]:
            p = os.path.join(models_dir, d, f)
            if os.path.isfile(p):
                return p
    return None


def load_raft(method: str, models_dir: str | None = None, device: str = "cpu", model=None):
    """torchvision RAFT with the user's weights (cached). ``model`` injects a built network (tests)."""
    if model is not None:
        return model.eval().to(device)
    path = find_raft(method, models_dir)
    if path is None:
        raise MissingModelError(
            f"RAFT weights not found: put '{RAFT_FILES[method][0]}' (torchvision's {method} weights, "
            f"https://download.pytorch.org/models/{RAFT_FILES[method][0]}, BSD-3-Clause) in "
            f"{os.path.join(models_dir or '<ComfyUI>/models', RAFT_FOLDER)}, or use 'farneback' or 'dis'",
            input="method")
    key = (path, device)
    with _raft_lock:
        if key not in _raft_cache:
            import torch
            from torchvision.models.optical_flow import raft_large, raft_small
            net = (raft_small if method == "raft_small" else raft_large)(weights=None, progress=False)
            sd = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(sd)
            _raft_cache[key] = net.eval().to(device)
        return _raft_cache[key]


#: RAFT's all-pairs correlation volume is (H/8 x W/8)^2 float32 per frame pair: 4 GB for a 1080p frame,
#: 275 GB at 4096 x 4096. Past this many bytes the flow must be computed on smaller copies (max_side).
MAX_RAFT_CORRELATION_BYTES = 2 * 1024 ** 3


def _check_raft_size(h: int, w: int) -> None:
    H, W = max(128, (h + 7) // 8 * 8), max(128, (w + 7) // 8 * 8)
    need = ((H // 8) * (W // 8)) ** 2 * 4
    if need > MAX_RAFT_CORRELATION_BYTES:
        longest = int(max(h, w) * (MAX_RAFT_CORRELATION_BYTES / need) ** 0.25) // 8 * 8
        raise ContinuityError(f"RAFT on {w}x{h} frames needs a {need / 1024 ** 3:.1f} GB correlation volume "
                              f"(at most {MAX_RAFT_CORRELATION_BYTES / 1024 ** 3:.0f} GB); set max_side to at most "
                              f"{longest}, or use farneback / dis", input="max_side")


def _flow_raft(frames: list[np.ndarray], net, device: str = "cpu", iters: int = 12) -> list[np.ndarray]:
    import torch
    out = []
    h, w = frames[0].shape[:2]
    # RAFT needs sides that are multiples of 8 and at least 128 px (its correlation pyramid)
    H, W = max(128, (h + 7) // 8 * 8), max(128, (w + 7) // 8 * 8)
    import torch.nn.functional as F

    def prep(x):
        t = torch.from_numpy(as_uint8_rgb(x)).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1.0
        return F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False) if (h, w) != (H, W) else t

    with torch.inference_mode():
        for a, b in zip(frames[:-1], frames[1:]):
            flows = net(prep(a), prep(b), num_flow_updates=iters)
            f = flows[-1][0].permute(1, 2, 0).float().cpu().numpy()
            if (h, w) != (H, W):
                import cv2
                f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
                f[..., 0] *= w / W
                f[..., 1] *= h / H
            out.append(f)
    return out


def flows(frames: list[np.ndarray], method: str = "farneback", *, max_side: int = 512,
          models_dir: str | None = None, device: str = "cpu", raft_model=None, check_interrupt=None) -> list[np.ndarray]:
    """Flow (H', W', 2) from each frame to the next, in pixels of the original frame size.

    The flow is computed on copies whose longest side is at most ``max_side`` (0: full size) and
    its vectors scaled back to original pixels.
    """
    if method not in FLOW_METHODS:
        raise ContinuityError(f"unknown optical-flow method '{method}'; choose one of {', '.join(FLOW_METHODS)}",
                              input="method")
    if len(frames) < 2:
        raise ContinuityError(f"motion needs at least 2 frames, got {len(frames)}", input="frames")
    shapes = {f.shape[:2] for f in frames}
    if len(shapes) > 1:
        raise ContinuityError(f"all frames must have one size, got {sorted(shapes)}", input="frames")
    h, w = frames[0].shape[:2]
    scale = min(1.0, max_side / max(h, w)) if max_side and max_side > 0 else 1.0
    if method.startswith("raft"):
        _check_raft_size(round(h * scale), round(w * scale))
        net = load_raft(method, models_dir, device, raft_model)
        small = [_resize(as_uint8_rgb(f), scale) for f in frames]
        res = _flow_raft(small, net, device)
        return [f / scale for f in res]
    greys = [_resize(_grey(f), scale) for f in frames]
    out = []
    for a, b in zip(greys[:-1], greys[1:]):
        if check_interrupt:
            check_interrupt()
        out.append(_flow_cv(a, b, method) / scale)
    return out


def magnitude(flow: np.ndarray) -> np.ndarray:
    return np.sqrt(flow[..., 0].astype(np.float32) ** 2 + flow[..., 1].astype(np.float32) ** 2)


def frame_intensity(mag: np.ndarray) -> float:
    """Mean magnitude of the pixels above the frame's mean magnitude (0 for a still frame)."""
    thr = float(mag.mean())
    above = mag[mag > thr]
    return float(above.mean()) if above.size else 0.0


@dataclass
class MotionResult:
    intensity: float            # average over frame pairs, capped if a cap was given
    raw_intensity: float        # before the cap
    per_pair: list[float]
    magnitudes: list[np.ndarray]  # (H', W') per pair, in original pixels
    method: str
    cap: float | None

    def to_dict(self) -> dict:
        return {"method": self.method, "intensity": self.intensity, "raw_intensity": self.raw_intensity,
                "cap": self.cap, "pairs": len(self.per_pair), "per_pair": self.per_pair}


def motion_intensity(frames: list[np.ndarray], method: str = "farneback", *, cap: float | None = 20.0,
                     max_side: int = 512, models_dir: str | None = None, device: str = "cpu",
                     raft_model=None, check_interrupt=None) -> MotionResult:
    fl = flows(frames, method, max_side=max_side, models_dir=models_dir, device=device, raft_model=raft_model,
               check_interrupt=check_interrupt)
    mags = [magnitude(f) for f in fl]
    per = [frame_intensity(m) for m in mags]
    raw = float(np.mean(per))
    val = min(raw, float(cap)) if cap is not None and cap > 0 else raw
    return MotionResult(val, raw, per, mags, method, cap if cap and cap > 0 else None)


def region_weights(mags: list[np.ndarray], n_frames: int, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """(n_frames, H, W) weights ``clip(f/255 + 0.5, 1, 1.5)``, f = magnitude scaled to 0-255 per pair.

    Frame i uses the flow arriving at it (from frame i-1); frame 0 uses the first pair's flow.
    """
    import cv2
    maps = []
    for m in mags:
        mx = float(m.max())
        f = (m / mx * 255.0) if mx > 1e-6 else np.zeros_like(m)
        wmap = np.clip(f / 255.0 + 0.5, 1.0, 1.5).astype(np.float32)
        if out_size is not None and wmap.shape[:2] != out_size:
            wmap = cv2.resize(wmap, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32, copy=False)
        maps.append(wmap)
    seq = [maps[0]] + maps
    return np.stack(seq[:n_frames])
