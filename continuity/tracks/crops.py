"""Temporally stable crops of a face track, and their paste back into every frame.

One crop size per track and a smoothed centre, so a video (or image) model sees the face steady
in its crop and nothing flickers because the window moved:

* **Centre**: per observed frame, the centre of the face's mask (or box) bounding box; bridged gap
  frames are interpolated linearly. The series is filtered with a running median over 5 frames
  (removes single-frame detector outliers) and then a Gaussian of ``sigma`` frames (default 2;
  edges reflected), both zero-phase. The result is rounded to whole pixels. On a static face whose
  detections wobble by a few pixels the crop moves by at most a pixel from one frame to the next.
* **Size**: one side for the whole track: the largest (mask bounding box side x ``context``),
  widened where needed so every frame's mask lies inside its smoothed window, at least ``min_size``.
  Where the window leaves the frame it is padded (as the still face fix does), never shifted.
* **Masks**: each frame's mask is averaged with its neighbours' (the same Gaussian weights, each
  neighbour moved by the difference of the smoothed windows, so the face stays aligned); frames
  without a detection (a bridged gap: the face is hidden) get an empty mask and are left as they
  are.
* **Resampling and paste**: :mod:`continuity.fix.geometry` (Lanczos crop, exact inverse on the way back,
  blending only inside the mask): outside the masks every frame is bit-exact.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import limits
from ..fix import geometry
from ..errors import ContinuityError

MEDIAN_WINDOW = 5


def smooth_series(values: np.ndarray, sigma: float) -> np.ndarray:
    """Running median over MEDIAN_WINDOW then Gaussian (sigma in frames), zero-phase, per column."""
    v = np.asarray(values, np.float64)
    if len(v) >= 3:
        v = ndimage.median_filter(v, size=(min(MEDIAN_WINDOW, len(v) | 1), 1), mode="nearest")
    if sigma > 0 and len(v) > 1:
        v = ndimage.gaussian_filter1d(v, sigma, axis=0, mode="reflect")
    return v


def gaussian_weights(sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.ones(1)
    r = int(np.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


@dataclass
class TrackCrop:
    """The stitch data of one track's crop sequence (what the VIDEO_STITCH socket carries)."""
    track_id: int
    member: str | None
    frames: list[int]                         # frame indices, first to last of the track
    boxes: list[geometry.CropBox]             # per frame, one side
    masks: np.ndarray                         # (N, side, side) float32: each frame's mask on its window
    size: tuple[int, int]                     # (H, W) of the frames
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return (f"TrackCrop(track {self.track_id}{'' if self.member is None else ' ' + self.member}, "
                f"frames {self.frames[0]}-{self.frames[-1]}, side {self.boxes[0].side})")

    def full_mask(self, k: int) -> np.ndarray:
        """Frame-size mask of the k-th frame (zero outside its window)."""
        h, w = self.size
        box = self.boxes[k]
        out = np.zeros((h, w), np.float32)
        rx0, ry0, rx1, ry1 = box.region
        out[ry0:ry1, rx0:rx1] = self.masks[k, ry0 - box.y0:ry1 - box.y0, rx0 - box.x0:rx1 - box.x0]
        return out

    def centres(self) -> np.ndarray:
        return np.array([[b.x0 + b.side / 2, b.y0 + b.side / 2] for b in self.boxes])


def stable_track_crop(track, frame_size: tuple[int, int], mask_of: Callable[[int], np.ndarray | tuple | None], *,
                      context: float = 1.5, min_size: int = 128, target: int = 512, sigma: float = 2.0,
                      pad_mode: str = "edge") -> TrackCrop:
    """The crop windows and smoothed masks of ``track`` (a :class:`~continuity.tracks.tracking.Track`).
    ``mask_of(frame)`` gives the face's (H, W) mask at an observed frame, or (bounding box, the mask
    inside it); None: use the face box."""
    h, w = frame_size
    frames = list(track.frames)
    raw: dict[int, tuple] = {}          # frame -> (bbox, the mask inside it as uint8 0-255)
    bbs = np.zeros((len(frames), 4))
    for k, f in enumerate(frames):
        m = mask_of(f) if f in track.observed else None
        if isinstance(m, tuple):            # (bounding box, the mask inside it)
            bb, m = m
            x0, y0 = (bb[0], bb[1]) if bb is not None else (0, 0)
        else:
            bb = geometry.mask_bbox(m) if m is not None else None
            x0, y0 = 0, 0
        if m is not None and bb is not None:
            part = np.asarray(m)[bb[1] - y0:bb[3] - y0, bb[0] - x0:bb[2] - x0]
            raw[f] = (bb, np.rint(np.clip(part.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8))
        if bb is None:
            bb = track.box(f)
        bbs[k] = bb
    observed = np.array([f in track.observed for f in frames])
    centres = np.stack([(bbs[:, 0] + bbs[:, 2]) / 2, (bbs[:, 1] + bbs[:, 3]) / 2], 1)
    if not observed.all():       # bridged gaps: interpolate the observed centres
        idx = np.arange(len(frames))
        for c in range(2):
            centres[:, c] = np.interp(idx, idx[observed], centres[observed, c])
    smooth = np.round(smooth_series(centres, sigma))
    longest = np.maximum(bbs[:, 2] - bbs[:, 0], bbs[:, 3] - bbs[:, 1])
    reach = np.max(np.abs(np.concatenate([bbs[:, [0, 2]] - smooth[:, :1], bbs[:, [1, 3]] - smooth[:, 1:]], 1)), 1)
    side = int(max(min_size, np.ceil(max((longest * context).max(), 2 * reach[observed].max() + 2))))
    # the windows' masks are kept per frame at this side: bounded before they are made (a tiny shot with
    # a huge min_size, or a large face with a wide context, would otherwise take side^2 per frame)
    limits.check_output(len(frames), side, side, input="min_size" if side == int(min_size) else "context",
                        input_pixels=len(frames) * int(h) * int(w))
    boxes = []
    for cx, cy in smooth:
        x0, y0 = int(cx - side // 2), int(cy - side // 2)
        boxes.append(geometry.CropBox(x0=x0, y0=y0, side=side, target=int(target), height=int(h), width=int(w),
                                      pad_mode=pad_mode))
    local = np.zeros((len(frames), side, side), np.uint8)
    have = np.zeros(len(frames), bool)
    for k, f in enumerate(frames):
        if f in raw:
            (x0, y0, x1, y1), m = raw.pop(f)
            _add_shifted(local[k], m, x0 - boxes[k].x0, y0 - boxes[k].y0)
            have[k] = True
    masks = _smooth_masks(local, have, boxes, gaussian_weights(sigma))
    return TrackCrop(track.id, track.member_name, frames, boxes, masks, (int(h), int(w)),
                     info={"context": context, "min_size": min_size, "target": target, "sigma": sigma,
                           "pad_mode": pad_mode, "side": side})


def _add_shifted(dst: np.ndarray, src: np.ndarray, dx: int, dy: int, weight: float | None = None) -> None:
    """dst[dy:, dx:] (+)= src, clipped to dst: assigned (uint8) without ``weight``, else added x weight."""
    h, w = dst.shape
    sh, sw = src.shape
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(w, dx + sw), min(h, dy + sh)
    if x1 <= x0 or y1 <= y0:
        return
    part = src[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    if weight is None:
        dst[y0:y1, x0:x1] = part
    else:
        dst[y0:y1, x0:x1] += weight * part


def _smooth_masks(local: np.ndarray, have: np.ndarray, boxes: list, wts: np.ndarray) -> np.ndarray:
    """Each frame's mask averaged with its neighbours' (weights ``wts``), each neighbour's window mask
    moved onto this frame's window; (N, side, side) float32 in [0, 1], zero where ``have`` is False."""
    n, side = local.shape[0], local.shape[1]
    r = len(wts) // 2
    masks = np.zeros((n, side, side), np.float32)
    for k in range(n):
        if not have[k]:
            continue
        acc = masks[k]
        tot = 0.0
        for d in range(-r, r + 1):
            j = k + d
            if 0 <= j < n and have[j]:
                _add_shifted(acc, local[j], boxes[j].x0 - boxes[k].x0, boxes[j].y0 - boxes[k].y0,
                             float(wts[d + r]) / 255.0)
                tot += float(wts[d + r])
        acc /= tot
        acc[acc < 0.5 / len(wts)] = 0.0
    return masks


def crop_frame(frame, tc: TrackCrop, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-th crop of the track, (T, T, C) Lanczos, and its mask (T, T) (antialiased triangle)."""
    box = tc.boxes[k]
    side = box.side
    whole = geometry.CropBox(x0=0, y0=0, side=side, target=box.target, height=side, width=side)
    crop = geometry.crop_resized(_float(frame), box, "lanczos")
    mask = (geometry.crop_resized(tc.masks[k], whole, "triangle") if tc.masks[k].any()
            else np.zeros((box.target, box.target), np.float32))
    return crop, mask


def crop_sequence(frames, tc: TrackCrop) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, T, C) crops (Lanczos) and (N, T, T) masks (antialiased triangle) of the track."""
    first = np.asarray(_float(frames[tc.frames[0]]))
    c = first.shape[-1] if first.ndim == 3 else 1
    t = tc.boxes[0].target
    limits.check_output(len(tc), t, t, input="target_size", input_pixels=len(tc) * int(tc.size[0]) * int(tc.size[1]))
    crops = np.empty((len(tc), t, t, c), np.float32)
    masks = np.empty((len(tc), t, t), np.float32)
    for k, f in enumerate(tc.frames):
        crops[k], masks[k] = crop_frame(frames[f], tc, k)
    return crops, masks


def _float(frame) -> np.ndarray:
    a = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32, copy=False)


def paste_frame(frame: np.ndarray, tc: TrackCrop, k: int, crop, *, feather_percent: float = 4.5,
                colour_match: bool = False, ref: np.ndarray | None = None) -> np.ndarray:
    """The frame (H, W, C) float32 with the k-th (edited) crop pasted in (in place when ``frame`` is
    float32 already): only the change made to the crop is pasted, blended inside the mask; outside it
    the frame keeps its values bit for bit. ``ref``: the crop as :func:`crop_frame` cut it from this
    frame (saves cutting it again)."""
    frame = _float(frame)
    if not tc.masks[k].any():
        return frame
    box = tc.boxes[k]
    t = box.target
    new = np.asarray(crop.detach().cpu().numpy() if hasattr(crop, "detach") else crop, np.float32)
    if new.ndim == 2:
        new = new[..., None]
    if new.shape[:2] != (t, t):
        new = geometry.resize(new, t, t)
    if ref is None or ref.shape[:2] != (t, t):
        ref = geometry.crop_resized(frame, box, "lanczos")
    rx0, ry0, rx1, ry1 = box.region
    region = tc.masks[k, ry0 - box.y0:ry1 - box.y0, rx0 - box.x0:rx1 - box.x0]
    geometry.paste_into(frame, box, region, new, ref, feather_percent=feather_percent, colour_match=colour_match)
    return frame


def paste_sequence(frames, tc: TrackCrop, crops, *, feather_percent: float = 4.5, colour_match: bool = False,
                   out: np.ndarray | None = None, check_interrupt: Callable | None = None) -> np.ndarray:
    """Paste a track's (edited) crop sequence back into its frames; returns all frames (N_all, H, W, C)
    float32 (``out``, changed in place, when given). Outside the masks every pixel is the original."""
    c = crops.detach().cpu().numpy() if hasattr(crops, "detach") else np.asarray(crops)
    if c.ndim == 3:
        c = c[..., None]
    if c.shape[0] != len(tc):
        raise ContinuityError(f"{c.shape[0]} crops for a track of {len(tc)} frames; paste the sequence that came "
                              "from the same Track Crop Sequence", input="crops")
    if out is None:
        out = np.stack([_float(f) for f in frames]).astype(np.float32)
    for k, f in enumerate(tc.frames):
        if check_interrupt is not None:
            check_interrupt()
        if tc.masks[k].any():
            out[f] = paste_frame(out[f], tc, k, c[k], feather_percent=feather_percent, colour_match=colour_match)
    return out
