"""Cutting a composite sheet (several portraits of one character on one image) into panels.

Panels are found by a recursive XY-cut: in a region, full-length bands of one flat colour
(gutters) or full-length colour discontinuities (seams, where panels touch without a gutter)
split it in two or more parts, alternately across rows and columns, until no part splits any
more; uneven (guillotine) layouts such as one tall panel beside two stacked ones come out right.
Where faces are known (from a detector), a part holding more than one face is cut further on a
line between the faces that crosses none of them (at the strongest seam in that gap), so a sheet
without visible panel borders still gives one panel per face.

Boxes are ``(x0, y0, x1, y1)`` in pixels, end-exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]


@dataclass
class SheetOptions:
    gutter_tolerance: float = 0.02     # max std (0-1 scale) of a row/column to count as gutter
    min_panel_fraction: float = 0.08    # parts thinner than this fraction of the sheet side are dropped
    min_panel_px: int = 24
    seams: bool = True                  # look for panel borders without gutter
    seam_strength: float = 0.05         # median sharp step across a seam (0-1 scale)
    seam_ratio: float = 3.0             # ... and this many times the 90th percentile of the region's
    max_depth: int = 8


@dataclass
class Panel:
    box: Box
    faces: list = field(default_factory=list)     # Face objects (sheet coordinates) inside the panel
    how: str = "gutter"                            # gutter | seam | face | whole

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def _to_float(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Start/end (exclusive) of the runs of True in a 1-D bool array."""
    if flags.size == 0:
        return []
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist()))


def _flat_lines(region: np.ndarray, axis: int, tol: float, colour: np.ndarray | None = None) -> np.ndarray:
    """For each line across ``axis`` (rows if axis=0), whether it is one flat colour (the gutter
    colour, when it is known)."""
    # std over the line of each channel, max over channels
    if axis == 0:
        std = region.std(axis=1).max(axis=-1)
        mean = region.mean(axis=1)
    else:
        std = region.std(axis=0).max(axis=-1)
        mean = region.mean(axis=0)
    flat = std <= tol
    if colour is not None:
        flat &= np.abs(mean - colour[None, :]).max(axis=-1) <= 0.06
    return flat


def gutter_colour(img: np.ndarray, tol: float) -> np.ndarray | None:
    """The colour of the lines that run flat across the whole sheet (outer margins, main gutters)."""
    lines = []
    for axis in (0, 1):
        flat = _flat_lines(img, axis, tol)
        if flat.any():
            means = img.mean(axis=1 if axis == 0 else 0)[flat]
            lines.append(means)
    if not lines:
        return None
    return np.median(np.concatenate(lines), axis=0).astype(np.float32)


def _seam_scores(region: np.ndarray, axis: int) -> np.ndarray:
    """Seam score at each boundary between line i-1 and i (index i, 1..n-1) across ``axis``.

    The colour step across the boundary, less the larger step two lines to either side (a seam
    between two pictures is sharp, a natural edge is spread over a few pixels), and of that the
    median along the line: high only where the sharp step runs the whole length.
    """
    if axis == 0:
        step = np.abs(np.diff(region, axis=0)).mean(axis=-1).T      # (w, h-1)
    else:
        step = np.abs(np.diff(region, axis=1)).mean(axis=-1)        # (h, w-1)
    pad = np.pad(step, ((0, 0), (2, 2)), mode="edge")
    excess = step - np.maximum(pad[:, :-4], pad[:, 4:])
    med = np.median(excess, axis=0)
    return np.concatenate([[0.0], med])


def _split_positions(region: np.ndarray, axis: int, opt: SheetOptions, min_len: int,
                     colour: np.ndarray | None = None) -> tuple[list[tuple[int, int]], str]:
    """Sub-ranges of the region along ``axis`` separated by gutters or seams (one range = no split)."""
    n = region.shape[axis]
    flat = _flat_lines(region, axis, opt.gutter_tolerance, colour)
    content = _runs(~flat)
    content = [(a, b) for a, b in content if b - a >= min_len]
    if len(content) > 1 or (len(content) == 1 and content[0] != (0, n)):
        return content, "gutter"
    if not opt.seams or n < 2 * min_len:
        return [(0, n)], "whole"
    scores = _seam_scores(region, axis)
    base = float(np.percentile(scores[1:], 90)) if n > 2 else 0.0
    thr = max(opt.seam_strength, opt.seam_ratio * base)
    cand = [i for i in range(1, n) if scores[i] >= thr
            and scores[i] >= scores[max(0, i - 1)] and scores[i] >= scores[min(n - 1, i + 1)]]
    cuts: list[int] = []
    for i in sorted(cand, key=lambda k: -scores[k]):
        if i < min_len or n - i < min_len:
            continue
        if all(abs(i - c) >= min_len for c in cuts):
            cuts.append(i)
    if not cuts:
        return [(0, n)], "whole"
    edges = [0] + sorted(cuts) + [n]
    return [(edges[k], edges[k + 1]) for k in range(len(edges) - 1)], "seam"


def find_panels_by_borders(rgb: np.ndarray, options: SheetOptions | None = None) -> list[tuple[Box, str]]:
    """Panels found from gutters and seams alone, in reading order (top to bottom, left to right)."""
    opt = options or SheetOptions()
    img = _to_float(rgb)
    h, w = img.shape[:2]
    min_len = max(opt.min_panel_px, int(round(opt.min_panel_fraction * min(h, w))))
    out: list[tuple[Box, str]] = []
    colour = gutter_colour(img, opt.gutter_tolerance)

    def rec(box: Box, axis: int, depth: int, how: str, failed_other: bool):
        x0, y0, x1, y1 = box
        region = img[y0:y1, x0:x1]
        if depth > opt.max_depth:
            out.append((box, how))
            return
        ranges, kind = _split_positions(region, axis, opt, min_len, colour)
        if len(ranges) == 1 and ranges[0] == (0, region.shape[axis]):
            if failed_other:
                out.append((box, how))
            else:
                rec(box, 1 - axis, depth + 1, how, True)
            return
        for a, b in ranges:
            sub = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
            rec(sub, 1 - axis, depth + 1, kind if how == "whole" else how, False)

    rec((0, 0, w, h), 0, 0, "whole", False)
    # trim flat margins left inside each panel (gutter remains at a panel's outer side)
    trimmed = []
    for (x0, y0, x1, y1), how in out:
        region = img[y0:y1, x0:x1]
        rows = np.flatnonzero(~_flat_lines(region, 0, opt.gutter_tolerance, colour))
        cols = np.flatnonzero(~_flat_lines(region, 1, opt.gutter_tolerance, colour))
        if rows.size and cols.size:
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
        else:
            continue  # an all-flat part: no picture in it
        if box[2] - box[0] >= min_len and box[3] - box[1] >= min_len:
            trimmed.append((box, how))
    trimmed.sort(key=lambda t: (t[0][1] // max(1, min_len), t[0][0]))
    return trimmed


def _face_inside(face, box: Box) -> bool:
    cx, cy = face.center
    return box[0] <= cx < box[2] and box[1] <= cy < box[3]


def _split_by_faces(img: np.ndarray, box: Box, faces: list, depth: int = 0) -> list[tuple[Box, list]]:
    """Cut ``box`` on lines between faces (crossing none) until each part holds at most one face."""
    if len(faces) <= 1 or depth > 16:
        return [(box, faces)]
    x0, y0, x1, y1 = box
    best = None  # (gap size, axis, position)
    for axis in (1, 0):  # 1: vertical cut (x), 0: horizontal cut (y)
        lo_i, hi_i = (0, 2) if axis == 1 else (1, 3)
        spans = sorted((f.box[lo_i], f.box[hi_i]) for f in faces)
        reach = spans[0][1]
        for a, b in spans[1:]:
            if a > reach:  # a gap between faces along this axis
                gap = (reach, a)
                size = a - reach
                if best is None or size > best[0]:
                    best = (size, axis, gap)
            reach = max(reach, b)
    if best is None:
        return [(box, faces)]  # faces overlap along both axes: cannot separate with a straight cut
    _, axis, (g0, g1) = best
    g0i, g1i = int(np.ceil(g0)), int(np.floor(g1))
    pos = int(round((g0 + g1) / 2))
    if g1i - g0i >= 3:
        # prefer the strongest seam in the gap
        if axis == 1:
            region = img[y0:y1, max(x0, g0i - 1):min(x1, g1i + 1)]
            scores = _seam_scores(region, 1)
            off = max(x0, g0i - 1)
        else:
            region = img[max(y0, g0i - 1):min(y1, g1i + 1), x0:x1]
            scores = _seam_scores(region, 0)
            off = max(y0, g0i - 1)
        if scores.size > 1 and float(scores.max()) > 0.05:
            pos = off + int(np.argmax(scores))
    if axis == 1:
        pos = min(max(pos, x0 + 1), x1 - 1)
        a, b = (x0, y0, pos, y1), (pos, y0, x1, y1)
    else:
        pos = min(max(pos, y0 + 1), y1 - 1)
        a, b = (x0, y0, x1, pos), (x0, pos, x1, y1)
    fa = [f for f in faces if _face_inside(f, a)]
    fb = [f for f in faces if _face_inside(f, b)]
    return _split_by_faces(img, a, fa, depth + 1) + _split_by_faces(img, b, fb, depth + 1)


def find_panels(rgb: np.ndarray, faces: list | None = None, *, method: str = "auto",
                options: SheetOptions | None = None) -> list[Panel]:
    """The panels of a composite sheet.

    ``method``: ``"gutters"`` (borders only), ``"faces"`` (cut between the given faces only),
    ``"auto"`` (borders, then faces split any part that still holds several).
    ``faces``: detections in sheet coordinates (objects with ``.box`` and ``.center``), or None.
    """
    opt = options or SheetOptions()
    img = _to_float(rgb)
    h, w = img.shape[:2]
    faces = list(faces or [])
    if method == "faces":
        parts = [((0, 0, w, h), "face")]
    else:
        parts = find_panels_by_borders(img, opt)
        if not parts:
            parts = [((0, 0, w, h), "whole")]
    panels: list[Panel] = []
    for box, how in parts:
        inside = [f for f in faces if _face_inside(f, box)]
        if method in ("auto", "faces") and len(inside) > 1:
            for sub, sub_faces in _split_by_faces(img, box, inside):
                panels.append(Panel(box=sub, faces=sub_faces, how="face"))
        else:
            panels.append(Panel(box=box, faces=inside, how=how))
    unit = max(1, min(h, w) // 20)
    panels.sort(key=lambda p: (p.box[1] // unit, p.box[0]))
    return panels
