"""Face tracks through a shot: detect per frame, link detections into tracks, cut at hard cuts,
and give each track to a cast member by its pooled identity.

* **Cuts**: each frame is reduced to a 64 px thumbnail and a colour histogram (8 bins per channel);
  a cut is where the histogram distance to the previous frame (half the L1 distance, 0-1) is at
  least ``cut_threshold`` and at least 3x the median distance around it. Tracks never cross a cut.
* **Linking** (within a shot): each live track predicts its box in the new frame from its last two
  observations (constant velocity); detections and tracks are matched by the Hungarian method on
  ``1 - IoU(predicted, detected)``, only pairs with IoU >= ``min_iou`` or centres closer than half a
  face (one face more per missed frame). Where a match is ambiguous (a track with two candidates, a detection with two tracks) or a
  track comes back after a gap, the faces' identity embeddings are added to the cost, so crossing
  faces keep their tracks. A track that is not seen for more than ``max_gap`` frames ends; gaps up to
  that are bridged (its box is interpolated there, but the gap frames are marked unobserved).
* **Assignment**: each track's identity is the normalised mean embedding of at most ``samples``
  of its frames (evenly spread; not every frame), compared with every cast member by the pack's
  identity measure; tracks go to members by :func:`continuity.cast.assign_faces` (Hungarian, each
  member's threshold), repeated for members whose tracks do not overlap in time (a face lost and
  found again later), so a member has at most one face in any frame and a track's member never
  changes mid-shot.

Everything is injected: ``detect(rgb, i) -> list[Face]``, ``embed(rgb, faces) -> (n, D)``,
``score(embeddings) -> (n, members)``; ComfyUI-free.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ContinuityError
from ..faces.base import Face, as_uint8_rgb
from ..faces.boxes import iou

CUT_THRESHOLD = 0.35
_FORBIDDEN = 1e6


@dataclass
class Track:
    id: int
    shot: int
    observed: dict[int, Face] = field(default_factory=dict)      # frame -> detected face
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    member: int | None = None
    member_name: str | None = None
    similarity: float | None = None                              # pooled identity vs its member
    similarities: np.ndarray | None = None                       # pooled identity vs every member

    @property
    def first(self) -> int:
        return min(self.observed)

    @property
    def last(self) -> int:
        return max(self.observed)

    @property
    def frames(self) -> range:
        return range(self.first, self.last + 1)

    def box(self, frame: int) -> tuple[float, float, float, float] | None:
        """The face box at ``frame``: detected, or interpolated inside a bridged gap; None outside."""
        if frame in self.observed:
            x0, y0, x1, y1 = (float(v) for v in self.observed[frame].box)
            return (x0, y0, x1, y1)
        if frame < self.first or frame > self.last:
            return None
        seen = sorted(self.observed)
        j = int(np.searchsorted(seen, frame))
        a, b = seen[j - 1], seen[j]
        t = (frame - a) / (b - a)
        ba, bb = np.asarray(self.observed[a].box, float), np.asarray(self.observed[b].box, float)
        x0, y0, x1, y1 = (float(v) for v in ba + t * (bb - ba))
        return (x0, y0, x1, y1)

    def label(self) -> str:
        return self.member_name if self.member_name is not None else f"unknown #{self.id}"

    def to_dict(self) -> dict:
        return {"id": self.id, "shot": self.shot, "first": self.first, "last": self.last,
                "observed": len(self.observed), "member": self.member_name,
                "similarity": None if self.similarity is None else round(float(self.similarity), 4),
                "embedded_frames": sorted(self.embeddings)}


@dataclass
class TrackSet:
    """What the TRACKS socket carries: the tracks of one IMAGE batch."""
    tracks: list[Track]
    n_frames: int
    size: tuple[int, int]                  # (H, W)
    cuts: list[int]                        # first frame of each shot after the first
    members: list[str] = field(default_factory=list)
    dropped: int = 0                       # tracks shorter than min_frames, ignored
    notes: list[str] = field(default_factory=list)
    crops: dict = field(default_factory=dict)   # track id -> TrackCrop, once a fix has cut them

    def __repr__(self) -> str:
        return f"TrackSet({len(self.tracks)} tracks, {self.n_frames} frames, cuts {self.cuts})"

    def of_member(self, name: str) -> list[Track]:
        return [t for t in self.tracks if t.member_name == name]

    def at(self, frame: int) -> list[Track]:
        return [t for t in self.tracks if frame in t.observed]

    def describe(self) -> list[str]:
        out = [f"{self.n_frames} frames, {len(self.cuts) + 1} shot(s)"
               + (f" (cuts before frames {', '.join(map(str, self.cuts))})" if self.cuts else "")
               + f", {len(self.tracks)} track(s)" + (f", {self.dropped} too short and ignored" if self.dropped else "")]
        for t in self.tracks:
            sims = ""
            if t.similarities is not None and len(self.members):
                sims = " (" + ", ".join(f"{n} {s:.3f}" for n, s in zip(self.members, t.similarities)) + ")"
            who = (f"{t.member_name}, similarity {t.similarity:.3f}" if t.member_name is not None
                   else "unknown: left alone" if self.members else "no cast")
            gaps = len(t.frames) - len(t.observed)
            out.append(f"track {t.id}: frames {t.first}-{t.last}, shot {t.shot}"
                       + (f", {gaps} frame(s) bridged" if gaps else "") + f": {who}{sims}")
        return out + self.notes

    def to_dict(self) -> dict:
        return {"frames": self.n_frames, "size": list(self.size), "cuts": self.cuts, "members": self.members,
                "dropped": self.dropped, "tracks": [t.to_dict() for t in self.tracks]}


# --------------------------------------------------------------------------- cuts

def _thumb_hist(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(as_uint8_rgb(rgb), (64, 36), interpolation=cv2.INTER_AREA)
    h = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).reshape(-1)
    return h / max(float(h.sum()), 1.0)


def cut_distances(frames) -> np.ndarray:
    """(N,) histogram distance of each frame to the previous one (0 for the first)."""
    hists = [_thumb_hist(f) for f in frames]
    d = [0.0] + [0.5 * float(np.abs(a - b).sum()) for a, b in itertools.pairwise(hists)]
    return np.asarray(d, np.float32)


def detect_cuts(frames, threshold: float = CUT_THRESHOLD, distances: np.ndarray | None = None) -> list[int]:
    """Frames that start a new shot (see the module docstring)."""
    d = cut_distances(frames) if distances is None else np.asarray(distances, np.float32)
    cuts = []
    for i in range(1, len(d)):
        around = np.concatenate([d[max(1, i - 5):i], d[i + 1:i + 6]])
        base = float(np.median(around)) if around.size else 0.0
        if d[i] >= threshold and d[i] >= 3.0 * base:
            cuts.append(i)
    return cuts


# --------------------------------------------------------------------------- linking

def _predict(track: Track, frame: int) -> np.ndarray:
    seen = sorted(track.observed)
    b1 = np.asarray(track.observed[seen[-1]].box, float)
    if len(seen) < 2:
        return b1
    b0 = np.asarray(track.observed[seen[-2]].box, float)
    v = (b1 - b0) / (seen[-1] - seen[-2])
    return b1 + v * (frame - seen[-1])


def _near(pred: np.ndarray, box, gap: int = 1) -> bool:
    """Centres within half a face of the prediction (a face more per frame of a bridged gap, where
    the prediction is less sure), sizes within a factor 1.67."""
    pw, ph = pred[2] - pred[0], pred[3] - pred[1]
    bw, bh = box[2] - box[0], box[3] - box[1]
    d = np.hypot((pred[0] + pred[2] - box[0] - box[2]) / 2, (pred[1] + pred[3] - box[1] - box[3]) / 2)
    ratio = max(pw, 1e-3) / max(bw, 1e-3)
    return bool(d < (0.5 + max(0, gap - 1)) * max(pw, ph, bw, bh) and 0.6 < ratio < 1.67)


class _Embeddings:
    """Embeddings of detections, computed at most once each, a frame's faces in one batch."""

    def __init__(self, frames, detections, embed):
        self.frames, self.detections, self.embed = frames, detections, embed
        self.cache: dict[int, np.ndarray] = {}

    def frame(self, i: int) -> np.ndarray | None:
        if self.embed is None or not self.detections[i]:
            return None
        if i not in self.cache:
            self.cache[i] = np.asarray(self.embed(as_uint8_rgb(self.frames[i]), self.detections[i]), np.float32)
        return self.cache[i]

    def face(self, i: int, face: Face) -> np.ndarray | None:
        e = self.frame(i)
        if e is None:
            return None
        k = next(j for j, f in enumerate(self.detections[i]) if f is face)
        return e[k]


def _appearance(track: Track, emb: _Embeddings) -> np.ndarray | None:
    if not track.embeddings:
        last = track.last
        v = emb.face(last, track.observed[last])
        if v is None:
            return None
        track.embeddings[last] = v
    m = np.mean(np.stack(list(track.embeddings.values())), axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def link_tracks(frames, detections: list[list[Face]], cuts: list[int], *, max_gap: int = 5,
                min_iou: float = 0.1, embed: Callable | None = None, appearance_weight: float = 2.0,
                embeddings: _Embeddings | None = None) -> list[Track]:
    """Tracks from per-frame detections (see the module docstring)."""
    emb = embeddings or _Embeddings(frames, detections, embed)
    starts = set(cuts)
    shot = 0
    tracks: list[Track] = []
    live: list[Track] = []
    for t, dets in enumerate(detections):
        if t in starts:
            shot += 1
            live = []
        live = [k for k in live if t - k.last <= max_gap + 1]
        if not dets:
            continue
        cost = np.full((len(live), len(dets)), _FORBIDDEN)
        preds = [_predict(k, t) for k in live]
        for a, p in enumerate(preds):
            for b, f in enumerate(dets):
                o = iou(p, f.box)
                if o >= min_iou or _near(p, f.box, t - live[a].last):
                    cost[a, b] = 1.0 - o
        gated = cost < _FORBIDDEN
        ambiguous = gated.sum(1) > 1
        ambiguous_d = gated.sum(0) > 1
        rows = [a for a in range(len(live)) if gated[a].any() and
                (ambiguous[a] or (gated[a] & ambiguous_d).any() or t - live[a].last > 1)]
        if rows and embed is not None:
            e = emb.frame(t)
            for a in rows:
                app = _appearance(live[a], emb)
                if app is None or e is None:
                    continue
                cost[a] = np.where(gated[a], cost[a] + appearance_weight * (1.0 - e @ app), _FORBIDDEN)
        matched = set()
        if live:
            r, c = linear_sum_assignment(cost)
            for a, b in zip(r, c):
                if cost[a, b] < _FORBIDDEN:
                    live[a].observed[t] = dets[b]
                    matched.add(b)
        for b, f in enumerate(dets):
            if b not in matched:
                tr = Track(id=len(tracks), shot=shot, observed={t: f})
                tracks.append(tr)
                live.append(tr)
    return tracks


# --------------------------------------------------------------------------- assignment

def sample_frames(track: Track, samples: int) -> list[int]:
    seen = sorted(track.observed)
    if len(seen) <= samples:
        return seen
    idx = np.round(np.linspace(0, len(seen) - 1, samples)).astype(int)
    return [seen[i] for i in sorted(set(idx))]


def pooled_identity(track: Track, emb: _Embeddings, samples: int) -> np.ndarray | None:
    for i in sample_frames(track, samples):
        if i not in track.embeddings:
            v = emb.face(i, track.observed[i])
            if v is None:
                return None
            track.embeddings[i] = v
    picked = [track.embeddings[i] for i in sample_frames(track, samples)]
    m = np.mean(np.stack(picked), axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def assign_tracks(tracks: list[Track], pooled: np.ndarray, sims: np.ndarray, thresholds, names: list[str]) -> None:
    """Give tracks to members (see the module docstring); sets ``member``, ``member_name``, ``similarity``."""
    from ..cast import assign_faces
    n = len(tracks)
    thr = np.asarray(thresholds, np.float32)
    for k, t in enumerate(tracks):
        t.similarities = sims[k] if len(sims) else None
    taken: dict[int, list[Track]] = {j: [] for j in range(len(names))}
    todo = list(range(n))
    while todo:
        allowed = np.ones((len(todo), len(names)), bool)
        for r, k in enumerate(todo):
            for j in range(len(names)):
                allowed[r, j] = not any(_overlap(tracks[k], o) for o in taken[j])
        res = assign_faces(sims[todo], thr, allowed=allowed)
        done = [todo[r] for r, m in enumerate(res.member_of_face) if m is not None]
        if not done:
            break
        for r, m in enumerate(res.member_of_face):
            if m is not None:
                t = tracks[todo[r]]
                t.member, t.member_name, t.similarity = int(m), names[m], float(sims[todo[r], m])
                taken[m].append(t)
        todo = [k for k in todo if k not in done]


def _overlap(a: Track, b: Track) -> bool:
    return a.first <= b.last and b.first <= a.last


# --------------------------------------------------------------------------- all of it

def track_faces(frames, detect: Callable, *, embed: Callable | None = None, score: Callable | None = None,
                thresholds=None, members: list[str] | None = None, max_gap: int = 5, min_iou: float = 0.1,
                min_frames: int = 2, samples: int = 8, cut_threshold: float = CUT_THRESHOLD,
                progress: Callable | None = None) -> TrackSet:
    """Detect, cut, link and (with ``score``) assign: the whole of this module for an (N, H, W, C)
    batch or a list of frames. ``progress(i, n)`` is called after each frame is detected (and may
    raise to interrupt)."""
    n = len(frames)
    if n == 0:
        raise ContinuityError("no frames", input="frames")
    if max_gap < 0 or samples < 1:
        raise ContinuityError("max_gap must be >= 0 and samples >= 1", input="max_gap")
    h, w = np.asarray(frames[0]).shape[:2]
    detections = []
    for i in range(n):
        detections.append(list(detect(as_uint8_rgb(frames[i]), i)))
        if progress is not None:
            progress(i + 1, n)
    cuts = detect_cuts(frames, cut_threshold)
    emb = _Embeddings(frames, detections, embed)
    tracks = link_tracks(frames, detections, cuts, max_gap=max_gap, min_iou=min_iou, embed=embed, embeddings=emb)
    kept = [t for t in tracks if len(t.observed) >= min(min_frames, n)]       # a still: one frame is a track
    for k, t in enumerate(kept):
        t.id = k
    ts = TrackSet(kept, n, (int(h), int(w)), cuts, list(members or []), dropped=len(tracks) - len(kept))
    if score is not None and kept and members:
        pooled = []
        for t in kept:
            p = pooled_identity(t, emb, samples)
            if p is None:
                raise ContinuityError("an identity embedder is needed to give tracks to the cast", input="face_model")
            pooled.append(p)
        sims = np.asarray(score(np.stack(pooled)), np.float32)
        assign_tracks(kept, np.stack(pooled), sims, thresholds, list(members))
    return ts
