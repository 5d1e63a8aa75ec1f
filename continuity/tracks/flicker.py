"""Flicker of a face track: identity over its frames and temporal stability inside the face.

* **Identity**: the face's identity similarity to its member at every ``stride``-th frame of the
  track where it is seen (the pack's identity measure, embedded in batches per frame): mean, std and
  the worst frames.
* **Temporal change**: between consecutive frames of the track, the previous crop is warped onto the
  current one with optical flow (:func:`continuity.video.flows`, computed on the *input* crops, so the
  same motion is compensated before and after the fix), and the mean absolute difference (0-255
  grey levels) is taken inside the face mask. What remains is change that motion does not explain:
  flicker. It is measured on the input and on the fixed frames over the same windows.
* **Calibration**: what "stable" means comes from the unfixed input itself: a fixed track is stable
  when its mean change is at most ``input mean + max(2 x input std, 1 grey level)`` over the track's
  frame pairs (an image model re-sampling each frame on its own typically lands well above it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import video
from ..arrays import as_float_rgb, as_uint8_rgb
from ..fix import geometry
from .crops import TrackCrop

WORK_SIDE = 192
STABLE_FLOOR = 1.0          # grey levels: a perfectly still input does not make every fix "flicker"


@dataclass
class TrackFlicker:
    track_id: int
    member: str | None
    frames: list[int]
    identity_before: list[float | None] = field(default_factory=list)
    identity_after: list[float | None] = field(default_factory=list)
    change_before: list[float | None] = field(default_factory=list)      # per pair (frame k-1 -> k)
    change_after: list[float | None] = field(default_factory=list)

    @staticmethod
    def _stats(vals) -> dict:
        v = np.array([x for x in vals if x is not None], np.float64)
        if not v.size:
            return {"mean": None, "std": None, "n": 0}
        return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}

    def worst_frames(self, which: str = "after", k: int = 3) -> list[tuple[int, float]]:
        vals = self.identity_after if which == "after" else self.identity_before
        pairs = [(f, v) for f, v in zip(self.frames, vals) if v is not None]
        return sorted(pairs, key=lambda p: p[1])[:k]

    @property
    def stable_limit(self) -> float | None:
        s = self._stats(self.change_before)
        return None if s["mean"] is None else s["mean"] + max(2.0 * s["std"], STABLE_FLOOR)

    @property
    def stable(self) -> bool | None:
        lim, a = self.stable_limit, self._stats(self.change_after)["mean"]
        return None if lim is None or a is None else bool(a <= lim)

    def to_dict(self) -> dict:
        return {"track": self.track_id, "member": self.member, "frames": [self.frames[0], self.frames[-1]],
                "identity_before": self._stats(self.identity_before), "identity_after": self._stats(self.identity_after),
                "worst_frames_after": self.worst_frames("after"),
                "change_before": self._stats(self.change_before), "change_after": self._stats(self.change_after),
                "stable_limit": self.stable_limit, "stable": self.stable,
                "per_frame": {"identity_before": self.identity_before, "identity_after": self.identity_after,
                              "change_before": self.change_before, "change_after": self.change_after}}

    def describe(self) -> str:
        who = self.member or f"track {self.track_id}"
        ib, ia = self._stats(self.identity_before), self._stats(self.identity_after)
        cb, ca = self._stats(self.change_before), self._stats(self.change_after)

        def f(s):
            return "n/a" if s["mean"] is None else f"{s['mean']:.3f} +- {s['std']:.3f}"
        worst = ", ".join(f"{fr} ({v:.3f})" for fr, v in self.worst_frames("after"))
        verdict = {None: "n/a", True: "stable", False: "FLICKERS"}[self.stable]
        lim = self.stable_limit
        return (f"{who} (frames {self.frames[0]}-{self.frames[-1]}): identity {f(ib)} -> {f(ia)}"
                + (f", worst frames {worst}" if worst else "")
                + f"; change after motion {f(cb)} -> {f(ca)} grey levels"
                + (f" (stable up to {lim:.2f}, from the input)" if lim is not None else "") + f": {verdict}")


def _grey_crops(frames, tc: TrackCrop, side: int) -> list[np.ndarray]:
    out = []
    for k, f in enumerate(tc.frames):
        box = tc.boxes[k]
        small = geometry.CropBox(x0=box.x0, y0=box.y0, side=box.side, target=side, height=box.height,
                                 width=box.width, pad_mode=box.pad_mode)
        rgb = geometry.crop_resized(as_float_rgb(frames[f]), small, "lanczos")
        out.append(cv2.cvtColor(as_uint8_rgb(rgb), cv2.COLOR_RGB2GRAY))
    return out


def _residual(prev: np.ndarray, cur: np.ndarray, mx: np.ndarray, my: np.ndarray, inside: np.ndarray) -> float:
    warped = cv2.remap(prev.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(warped - cur.astype(np.float32))[inside].mean())


def temporal_change(before, after, tc: TrackCrop, *, method: str = "farneback",
                    side: int = WORK_SIDE) -> tuple[list[float | None], list[float | None]]:
    """Per frame pair of the track: mean |warped previous - current| inside the mask (0-255), for the
    ``before`` frames and the ``after`` frames (``after`` may be None), flow from ``before``."""
    gb = _grey_crops(before, tc, side)
    ga = _grey_crops(after, tc, side) if after is not None else None
    whole = geometry.CropBox(x0=0, y0=0, side=tc.boxes[0].side, target=side, height=tc.boxes[0].side,
                             width=tc.boxes[0].side)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    cb: list[float | None] = [None]
    ca: list[float | None] = [None]
    for k in range(1, len(tc)):
        m = tc.masks[k]
        if not m.any() or not tc.masks[k - 1].any():
            cb.append(None)
            ca.append(None)
            continue
        inside = geometry.crop_resized(m, whole, "triangle") > 0.5
        if not inside.any():
            cb.append(None)
            ca.append(None)
            continue
        # backward flow (current -> previous) gives, for each current pixel, where it was
        flow = video.flows([np.repeat(gb[k][..., None], 3, 2), np.repeat(gb[k - 1][..., None], 3, 2)],
                           method, max_side=0)[0]
        mx, my = xx + flow[..., 0], yy + flow[..., 1]

        cb.append(_residual(gb[k - 1], gb[k], mx, my, inside))
        ca.append(_residual(ga[k - 1], ga[k], mx, my, inside) if ga is not None else None)
    return cb, ca


def identity_series(frames, tc: TrackCrop, faces_at: Callable[[np.ndarray, int], list], embed: Callable, score: Callable,
                    stride: int = 1) -> list[float | None]:
    """The track's face identity per frame (every ``stride``-th frame; None where not measured or not
    found): the face of ``faces_at(frame)`` nearest the window centre, embedded, scored."""
    out: list[float | None] = []
    for k, f in enumerate(tc.frames):
        if k % max(1, stride) or not tc.masks[k].any():
            out.append(None)
            continue
        fr = frames[f]
        a = fr.detach().cpu().numpy() if hasattr(fr, "detach") else np.asarray(fr)
        rgb = as_uint8_rgb(a)
        found = faces_at(rgb, f)
        box = tc.boxes[k]
        cx, cy = box.x0 + box.side / 2, box.y0 + box.side / 2
        near = [g for g in found if abs(g.center[0] - cx) < box.side / 2 and abs(g.center[1] - cy) < box.side / 2]
        if not near:
            out.append(None)
            continue
        face = min(near, key=lambda g: np.hypot(g.center[0] - cx, g.center[1] - cy))
        e = np.asarray(embed(rgb, [face]), np.float32)
        out.append(float(np.asarray(score(e)).reshape(-1)[0]))
    return out
