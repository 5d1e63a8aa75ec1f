"""The face fix through a shot: for each track, its stable crop windows, then per frame crop ->
injected inpaint -> paste, into one running result (a later track is cut from frames that already
hold the earlier tracks' fixes, as the still face fix does with several faces).

ComfyUI-free: ``inpaint(crop (T, T, 3), mask (T, T), track, k) -> (T, T, 3)`` is given by the
caller (the nodes use the still pipeline's two-pass inpaint with the member's LoRA and prompt and
one seed per track, so every frame of a track gets the same noise)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..arrays import mask_bbox
from .crops import TrackCrop, crop_frame, paste_frame, stable_track_crop
from .tracking import Track, TrackSet


@dataclass
class ShotFix:
    crops: dict[int, TrackCrop] = field(default_factory=dict)     # track id -> its windows and masks
    fixed_frames: dict[int, int] = field(default_factory=dict)    # track id -> frames inpainted
    skipped: dict[int, str] = field(default_factory=dict)         # track id -> why it was left alone


def plan_crops(ts: TrackSet, tracks: list[Track], mask_of: Callable[[Track, int], np.ndarray | None], **crop_opts
               ) -> dict[int, TrackCrop]:
    """Each track's stable crop windows and smoothed masks. ``mask_of(track, frame)`` is called frame
    by frame (all tracks of a frame together, so a caller can share per-frame work such as the person
    segmentation); only each mask's bounding-box crop is kept."""
    kept: dict[int, dict[int, tuple | None]] = {t.id: {} for t in tracks}
    for f in sorted({f for t in tracks for f in t.observed}):
        for t in tracks:
            if f in t.observed:
                m = mask_of(t, f)
                bb = mask_bbox(m) if m is not None else None
                kept[t.id][f] = None if m is None or bb is None else (bb, np.asarray(m)[bb[1]:bb[3], bb[0]:bb[2]].copy())
    return {t.id: stable_track_crop(t, ts.size, kept[t.id].get, **crop_opts) for t in tracks}


def fix_shot(out: np.ndarray, ts: TrackSet, tracks: list[Track], crops: dict[int, TrackCrop],
             inpaint: Callable[[np.ndarray, np.ndarray, Track, int], np.ndarray], *, feather_percent: float = 4.5,
             colour_match: bool = False, progress: Callable[[int, int], None] | None = None) -> ShotFix:
    """Fix ``tracks`` in ``out`` (N, H, W, C) float32, in place. ``progress(done, total)`` after each
    face-frame (it may raise to interrupt: frames already pasted stay fixed)."""
    res = ShotFix(crops=dict(crops))
    total = sum(int(np.count_nonzero(crops[t.id].masks.reshape(len(crops[t.id]), -1).any(1))) for t in tracks)
    done = 0
    for t in tracks:
        tc = crops[t.id]
        n = 0
        for k, f in enumerate(tc.frames):
            if not tc.masks[k].any():
                continue
            crop, mask = crop_frame(out[f], tc, k)
            new = inpaint(crop[..., :3], mask, t, k)
            if crop.shape[-1] > 3:                    # extra channels (alpha) stay as they were
                new = np.concatenate([np.asarray(new, np.float32), crop[..., 3:]], axis=-1)
            out[f] = paste_frame(out[f], tc, k, new, feather_percent=feather_percent, colour_match=colour_match,
                                 ref=crop)
            n += 1
            done += 1
            if progress is not None:
                progress(done, total)
        res.fixed_frames[t.id] = n
    return res
