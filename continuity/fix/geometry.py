"""Square crops around a mask, exact float resizing, and paste-back with a feathered blend.

The face fix crops a square around a mask (the mask's bounding box times a context factor, with a
minimum side), resizes it to a fixed side for the diffusion model, and later pastes the result
back. Everything here works in float32 with no 8-bit rounding:

* **Crop boxes never shift.** Where the square crosses the image border the missing pixels are
  made up by padding (``"edge"`` replicates the border pixel, ``"reflect"`` mirrors the image), so
  the masked region stays centred in the crop.
* **Resizing** is separable and sparse: a weight matrix per axis, built like PIL's resampler
  (pixel-centre alignment, support widened by the scale factor when shrinking), with the padding
  folded into the matrix so the padded square is never materialised. Images use Lanczos-3 and are
  clamped to [0, 1] after resizing (Lanczos overshoots at edges); masks use an antialiased
  triangle (bilinear) filter, which never overshoots.
* **Paste-back** adds the *change* made to the crop, resized back, to the original frame, so an
  unchanged crop (or part of one) leaves the frame exactly as it was. The change of a crop that
  was *enlarged* is shrunk with the exact left inverse of the enlargement (the least-squares
  ``(UᵀU)⁻¹Uᵀ`` of the Lanczos upscale ``U``: Lanczos antialiasing followed by a mild
  deconvolution); that of a crop that was *shrunk* (box larger than the target side) is enlarged
  with Lanczos-3, keeping the frame's finer detail.
* **Blending** happens only inside the mask: ``alpha = mask * smoothstep(d / w)`` where ``d`` is the
  distance to the nearest pixel outside the mask and ``w`` (the feather width) is a percentage of
  the crop side in frame pixels, clamped. Pixels where the mask is 0 are never touched (not even
  by rounding), so everything outside the mask is bit-exact.

Images are ``(H, W, C)`` float32 arrays (any number of channels), masks ``(H, W)`` in [0, 1].
Batches are ``(B, H, W, C)`` / ``(B, H, W)``. Torch tensors are accepted wherever arrays are.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.linalg
import scipy.sparse

from ..arrays import mask_bbox as mask_bbox  # the crop boxes' input, re-exported
from ..errors import ContinuityError

PAD_MODES = ("edge", "reflect")
MAX_FEATHER_PX = 64


# --------------------------------------------------------------------------- array helpers

def _np(x, dtype=np.float32) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------- crop boxes

@dataclass(frozen=True)
class CropBox:
    """Where one crop came from: a square ``side`` x ``side`` at (``x0``, ``y0``) in an image of
    ``height`` x ``width`` (the square may extend past the border: that part is padding), resized
    to ``target`` x ``target``. ``empty``: the mask was empty, the paste leaves the image as it is."""
    x0: int
    y0: int
    side: int
    target: int
    height: int
    width: int
    pad_mode: str = "edge"
    empty: bool = False

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return self.target / self.side

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels of the square that lie outside the image."""
        return (max(0, -self.x0), max(0, -self.y0),
                max(0, self.x0 + self.side - self.width), max(0, self.y0 + self.side - self.height))

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the part of the image the square covers (end-exclusive)."""
        return (max(0, self.x0), max(0, self.y0),
                min(self.width, self.x0 + self.side), min(self.height, self.y0 + self.side))

    def as_dict(self) -> dict:
        left, top, right, bottom = self.padding
        return {"x0": self.x0, "y0": self.y0, "side": self.side, "target": self.target,
                "height": self.height, "width": self.width, "pad_mode": self.pad_mode, "empty": self.empty,
                "scale": self.scale, "padding": {"left": left, "top": top, "right": right, "bottom": bottom}}


@dataclass
class StitchRecord:
    """What Paste Back needs: per image its box, the original image and its mask (frame size)."""
    boxes: list[CropBox]
    originals: np.ndarray            # (B, H, W, C) float32
    masks: np.ndarray                # (B, H, W) float32
    crops: np.ndarray | None = None  # (B, T, T, C) the crops as they were handed out
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        return f"StitchRecord({len(self.boxes)} crops, frame {self.originals.shape[2]}x{self.originals.shape[1]})"


def square_box(bbox: tuple[int, int, int, int] | None, height: int, width: int, *, context: float = 1.5,
               min_size: int = 128, target: int = 1024, pad_mode: str = "edge") -> CropBox:
    """The square crop for a mask bounding box: side = max(longest bbox side x ``context``,
    ``min_size``), centred on the box (never shifted at the border). No bbox: the whole image,
    centred, marked ``empty``."""
    if pad_mode not in PAD_MODES:
        raise ContinuityError(f"unknown padding '{pad_mode}'; choose one of {', '.join(PAD_MODES)}", input="padding")
    if not (1.0 <= context <= 10.0):
        raise ContinuityError(f"context factor {context} is outside 1-10", input="context")
    if target < 8:
        raise ContinuityError(f"target size {target} is too small (at least 8)", input="target_size")
    empty = bbox is None
    if empty:
        bbox = (0, 0, width, height)
        ctx = 1.0
    else:
        ctx = context
    assert bbox is not None
    bx0, by0, bx1, by1 = bbox
    longest = max(bx1 - bx0, by1 - by0)
    side = max(int(math.ceil(longest * ctx - 1e-9)), int(min_size), 1)
    x0 = int(math.floor((bx0 + bx1 - side) / 2 + 0.5))
    y0 = int(math.floor((by0 + by1 - side) / 2 + 0.5))
    return CropBox(x0=x0, y0=y0, side=side, target=int(target), height=int(height), width=int(width),
                   pad_mode=pad_mode, empty=empty)


# --------------------------------------------------------------------------- resampling weights

def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


_KERNELS = {"lanczos": (_lanczos3, 3.0), "triangle": (_triangle, 1.0)}


@functools.lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int, kernel: str, extend: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, weights) of the n_out x n_in resampling matrix, PIL's convention: output pixel i
    centred at (i + 0.5) * n_in / n_out in input coordinates; taps outside [0, n_in) are dropped and
    the rest renormalised (the input is treated as the whole signal). ``extend``: keep the taps
    outside [0, n_in) (cols < 0 or >= n_in), for a window into a larger signal."""
    fn, support = _KERNELS[kernel]
    scale = n_in / n_out
    fs = max(scale, 1.0)
    sup = support * fs
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    xmin = np.floor(centre - sup + 0.5).astype(np.int64)
    xmax = np.floor(centre + sup + 0.5).astype(np.int64)
    if not extend:
        xmin = np.maximum(xmin, 0)
        xmax = np.minimum(xmax, n_in)
    k = int(math.ceil(sup)) * 2 + 2
    cols = xmin[:, None] + np.arange(k)[None, :]
    valid = cols < xmax[:, None]
    w = fn((cols + 0.5 - centre[:, None]) / fs) * valid
    total = w.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    w = w / total
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    keep = valid & (w != 0)
    return rows[keep], cols[keep], w[keep]


def _pad_index(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Indices into a signal of length n for positions that may lie outside it."""
    if mode == "edge" or n == 1:
        return np.clip(idx, 0, n - 1)
    period = 2 * (n - 1)             # numpy's "reflect": -1 -> 1, n -> n - 2
    j = np.mod(idx, period)
    return np.where(j >= n, period - j, j)


def _axis_matrix(start: int, side: int, n_img: int, n_out: int, kernel: str, pad_mode: str):
    """Sparse (n_out x span) matrix resizing image samples [lo, lo + span) along one axis into the
    crop, with the padding folded in; returns (matrix, lo, hi). Shrinking windows take their
    antialiasing taps beyond the box edge too (from the image, or the padding); enlarging ones stop
    at the box edge, so that Paste Back can invert them exactly."""
    rows, cols, w = _taps(side, n_out, kernel, side > n_out)
    src = _pad_index(cols + start, n_img, pad_mode)
    lo, hi = int(src.min()), int(src.max()) + 1
    mat = scipy.sparse.csr_matrix((w.astype(np.float32), (rows, src - lo)), shape=(n_out, hi - lo))
    mat.sum_duplicates()
    return mat, lo, hi


@functools.lru_cache(maxsize=64)
def _plain_matrix(n_in: int, n_out: int, kernel: str, edge: bool = False):
    """Plain resize matrix; ``edge``: taps past the ends repeat the end samples (instead of being
    dropped and the rest renormalised)."""
    rows, cols, w = _taps(n_in, n_out, kernel, edge)
    if edge:
        cols = np.clip(cols, 0, n_in - 1)
        mat = scipy.sparse.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n_out, n_in))
        mat.sum_duplicates()
        return mat
    return scipy.sparse.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n_out, n_in))


def _apply_axis0(mat, x: np.ndarray) -> np.ndarray:
    """mat (n_out x n_in) applied along axis 0 of x (n_in, ...)."""
    shape = x.shape
    out = mat @ x.reshape(shape[0], -1)
    return np.asarray(out, dtype=np.float32).reshape((mat.shape[0],) + shape[1:])


def _separable(x: np.ndarray, my, mx) -> np.ndarray:
    """Apply my along rows and mx along columns of x (h, w, C), in the order that moves less memory
    (each pass works on axis 0, so one pass needs the array transposed before and after)."""
    h, w, c = x.shape
    ho, wo = my.shape[0], mx.shape[0]
    rows_first = ho * w + wo * ho + my.nnz * w + mx.nnz * ho
    cols_first = w * h + wo * h + mx.nnz * h + my.nnz * wo
    if rows_first <= cols_first:
        y = _apply_axis0(my, x)                                   # (ho, w, C)
        y = _apply_axis0(mx, _t(y))                               # (wo, ho, C)
        return _t(y)
    y = _apply_axis0(mx, _t(x))                                   # (wo, h, C)
    return _apply_axis0(my, _t(y))                                # (ho, wo, C)


def _t(x: np.ndarray) -> np.ndarray:
    """Swap the first two axes of (a, b, C) into a contiguous (b, a, C) array (OpenCV's blocked
    transpose is several times faster than numpy's for interleaved channels)."""
    if x.dtype == np.float32 and x.shape[2] in (1, 2, 3, 4) and x.shape[0] > 0 and x.shape[1] > 0:
        out = cv2.transpose(np.ascontiguousarray(x))
        return out.reshape(x.shape[1], x.shape[0], x.shape[2])
    return np.ascontiguousarray(x.transpose(1, 0, 2))


def resize(image, height: int, width: int, kernel: str = "lanczos", clamp: bool = True) -> np.ndarray:
    """Resize an (H, W, C) or (H, W) float image; Lanczos-3 or triangle, antialiased, float32."""
    x = _np(image)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    out = _separable(np.ascontiguousarray(x), _plain_matrix(x.shape[0], height, kernel),
                     _plain_matrix(x.shape[1], width, kernel))
    if clamp:
        np.clip(out, 0.0, 1.0, out=out)
    return out[..., 0] if flat else out


def crop_resized(image, box: CropBox, kernel: str = "lanczos", clamp: bool = True) -> np.ndarray:
    """The box's square, padded where it leaves the image, resized to box.target (float32)."""
    x = _np(image)
    flat = x.ndim == 2
    if flat:
        x = x[..., None]
    h, w = x.shape[:2]
    my, ylo, yhi = _axis_matrix(box.y0, box.side, h, box.target, kernel, box.pad_mode)
    mx, xlo, xhi = _axis_matrix(box.x0, box.side, w, box.target, kernel, box.pad_mode)
    src = np.ascontiguousarray(x[ylo:yhi, xlo:xhi])
    out = _separable(src, my, mx)
    if clamp:
        np.clip(out, 0.0, 1.0, out=out)
    return out[..., 0] if flat else out


# --------------------------------------------------------------------------- exact inverse of an upscale

@functools.lru_cache(maxsize=64)
def _inverse_factors(side: int, n_crop: int):
    """For the Lanczos upscale U: side -> n_crop, Uᵀ and (UᵀU)⁻¹ as sparse float32 matrices.

    UᵀU is a well-conditioned banded matrix, so its inverse decays exponentially away from the
    diagonal: it is computed with a banded Cholesky factorisation and entries below 1e-7 of the
    largest are dropped (a few dozen per row remain), which turns every solve into one sparse
    product."""
    u = _plain_matrix(side, n_crop, "lanczos").astype(np.float64)
    ut = u.T.tocsr()
    m = (ut @ u).tocoo()
    bw = int(np.max(np.abs(m.row - m.col))) if m.nnz else 0
    ab = np.zeros((bw + 1, side))
    upper = m.row <= m.col
    ab[bw + m.row[upper] - m.col[upper], m.col[upper]] = m.data[upper]
    cb = scipy.linalg.cholesky_banded(ab, lower=False, check_finite=False)
    inv = scipy.linalg.cho_solve_banded((cb, False), np.eye(side), check_finite=False)
    inv[np.abs(inv) < 1e-7 * np.abs(inv).max()] = 0.0
    return ut.astype(np.float32), scipy.sparse.csr_matrix(inv.astype(np.float32))


def _inverse_axis0(x: np.ndarray, side: int, keep: tuple[int, int]) -> np.ndarray:
    """Rows ``keep`` of (UᵀU)⁻¹Uᵀ x: the least-squares inverse of the upscale side -> x.shape[0]."""
    ut, inv = _inverse_factors(side, x.shape[0])
    return _apply_axis0(inv[keep[0]:keep[1]], _apply_axis0(ut, x))


def uncrop(crop, box: CropBox, clamp: bool = True, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A (possibly edited) crop resized back to the frame: the part of the box inside the image,
    (y1 - y0, x1 - x0, C) for ``box.region`` (or for ``window``, (x0, y0, x1, y1) in frame pixels
    inside the region, when only that part is needed). Enlarged crops use the exact inverse of the
    enlargement ``(UᵀU)⁻¹Uᵀ``; shrunk crops are enlarged back with Lanczos-3."""
    c = _np(crop)
    flat = c.ndim == 2
    if flat:
        c = c[..., None]
    rx0, ry0, rx1, ry1 = window if window is not None else box.region
    py, px = ry0 - box.y0, rx0 - box.x0
    keep_y, keep_x = (py, py + ry1 - ry0), (px, px + rx1 - rx0)
    th, tw = c.shape[:2]
    c = np.ascontiguousarray(c)

    if box.side <= th and box.side <= tw:
        # Uᵀ on both axes first (down to side x side), then the two sparse inverses
        uty, invy = _inverse_factors(box.side, th)
        utx, invx = _inverse_factors(box.side, tw)
        y = _apply_axis0(utx, _t(_apply_axis0(uty, c)))                   # (side_x, side_y, C)
        y = _apply_axis0(invx[keep_x[0]:keep_x[1]], y)                     # (kx, side_y, C)
        out = _apply_axis0(invy[keep_y[0]:keep_y[1]], _t(y))               # (ky, kx, C)
    else:
        def back(n, keep):
            if box.side <= n:
                return lambda a: _inverse_axis0(a, box.side, keep)
            mat = _plain_matrix(n, box.side, "lanczos", True)[keep[0]:keep[1]]
            return lambda a: _apply_axis0(mat, a)

        out = _t(back(tw, keep_x)(_t(back(th, keep_y)(c))))
    if clamp:
        np.clip(out, 0.0, 1.0, out=out)
    return out[..., 0] if flat else out


# --------------------------------------------------------------------------- crop for inpaint

def _batch(images, masks) -> tuple[np.ndarray, np.ndarray]:
    x = _np(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ContinuityError(f"expected an image batch (B, H, W, C), got shape {tuple(x.shape)}", input="image")
    b, h, w = x.shape[:3]
    if h < 1 or w < 1:
        raise ContinuityError(f"the image is empty ({w}x{h})", input="image")
    if masks is None:
        m = np.zeros((b, h, w), np.float32)
    else:
        m = _np(masks)
        if m.ndim == 2:
            m = m[None]
        if m.ndim == 4 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.ndim != 3:
            raise ContinuityError(f"expected a mask batch (B, H, W), got shape {tuple(m.shape)}", input="mask")
        if m.shape[1:] != (h, w):
            raise ContinuityError(f"the mask is {m.shape[2]}x{m.shape[1]} but the image is {w}x{h}; "
                                  "they must have the same size", input="mask")
        if m.shape[0] == 1 and b > 1:
            m = np.broadcast_to(m, (b, h, w))
        elif m.shape[0] != b:
            raise ContinuityError(f"{m.shape[0]} masks for {b} images; give one mask or one per image",
                                  input="mask")
    m = np.clip(np.nan_to_num(m), 0.0, 1.0)
    return x, m


def crop_for_inpaint(images, masks, *, context: float = 1.5, min_size: int = 128, target: int = 1024,
                     pad_mode: str = "edge") -> tuple[np.ndarray, np.ndarray, StitchRecord]:
    """Crop every image of a batch around its mask: returns crops (B, T, T, C), their masks
    (B, T, T) and the stitch record. An empty mask gives an ``empty`` box (the whole image,
    centred) that Paste Back leaves untouched."""
    x, m = _batch(images, masks)
    b, h, w, c = x.shape
    crops = np.empty((b, target, target, c), np.float32)
    cmasks = np.empty((b, target, target), np.float32)
    boxes = []
    for i in range(b):
        box = square_box(mask_bbox(m[i]), h, w, context=context, min_size=min_size, target=target,
                         pad_mode=pad_mode)
        crops[i] = crop_resized(x[i], box, "lanczos")
        if box.empty:
            cmasks[i] = 0.0
        else:
            cmasks[i] = crop_resized(m[i], box, "triangle")
        boxes.append(box)
    record = StitchRecord(boxes=boxes, originals=x, masks=np.ascontiguousarray(m), crops=crops,
                          info={"context": context, "min_size": min_size, "target": target, "pad_mode": pad_mode})
    return crops, cmasks, record


# --------------------------------------------------------------------------- paste back

def feather_width(side: int, feather_percent: float) -> int:
    """The blend width in frame pixels: ``feather_percent`` of the crop side, clamped to 1-64 px
    (0 when the percentage is 0)."""
    if feather_percent <= 0:
        return 0
    return int(min(MAX_FEATHER_PX, max(1, round(side * feather_percent / 100.0))))


def blend_alpha(mask_region: np.ndarray, box: CropBox, width: int) -> np.ndarray:
    """alpha = mask * smoothstep(distance to the outside of the mask / width), on the box's region.
    Box edges inside the image count as outside the mask (the crop ends there); the image border
    does not (nothing lies beyond it)."""
    m = _np(mask_region)
    if width <= 0:
        return m.copy()
    inside = (m > 0).astype(np.uint8)
    rx0, ry0, rx1, ry1 = box.region
    # 1-px border: 0 where the box edge is inside the image, a copy of the mask at the image border
    top = 0 if ry0 > 0 else None
    bottom = 0 if ry1 < box.height else None
    left = 0 if rx0 > 0 else None
    right = 0 if rx1 < box.width else None
    padded = np.pad(inside, 1, mode="edge")
    if top is not None:
        padded[0, :] = 0
    if bottom is not None:
        padded[-1, :] = 0
    if left is not None:
        padded[:, 0] = 0
    if right is not None:
        padded[:, -1] = 0
    if not padded.all():
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    else:
        dist = np.full(m.shape, np.inf, np.float32)
    t = np.clip((dist - 0.5) / float(width), 0.0, 1.0)
    ramp = t * t * (3.0 - 2.0 * t)
    return (m * ramp).astype(np.float32)


def match_colour(new: np.ndarray, old: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Shift the new pixels' colour by the mean difference to the old ones in the blend band
    (0 < alpha < 1, weighted toward the outer edge)."""
    band = (alpha > 0) & (alpha < 1)
    if not band.any():
        return new
    wgt = (1.0 - alpha)[band][:, None]
    offset = ((old[band] - new[band]) * wgt).sum(axis=0) / max(float(wgt.sum()), 1e-12)
    return np.clip(new + offset.astype(np.float32), 0.0, 1.0)


def paste_into(image: np.ndarray, box: CropBox, mask_region, crop, ref=None, *, feather_percent: float = 4.5,
               colour_match: bool = False) -> bool:
    """Paste one crop into ``image`` (H, W, C) float32, IN PLACE, blended only inside the mask.
    ``mask_region``: the frame mask on ``box.region`` (the part of the box inside the image).
    ``ref``: the crop as it was handed out; then only the change made to it is pasted (see
    :func:`paste_back`). Returns False when nothing was changed. Pixels where the mask is 0 keep
    their values bit for bit."""
    if box.empty:
        return False
    c = _np(crop)
    ch = min(image.shape[-1], c.shape[-1])      # e.g. RGB crops into RGBA frames: the alpha stays as it was
    c = c[..., :ch]
    rx0, ry0, rx1, ry1 = box.region
    alpha = blend_alpha(mask_region, box, feather_width(box.side, feather_percent))
    bb = mask_bbox(alpha)
    if bb is None:
        return False
    # only the window where alpha > 0 is resized back and blended
    alpha = alpha[bb[1]:bb[3], bb[0]:bb[2]]
    rx0, ry0, rx1, ry1 = rx0 + bb[0], ry0 + bb[1], rx0 + bb[2], ry0 + bb[3]
    window = (rx0, ry0, rx1, ry1)
    old = image[ry0:ry1, rx0:rx1, :ch]
    if ref is not None:
        change = c - _np(ref)[..., :ch]
        if not change.any():
            return False
        new = np.clip(old + uncrop(change, box, clamp=False, window=window), 0.0, 1.0)
    else:
        new = uncrop(c, box, window=window)
    if colour_match:
        new = match_colour(new, old, alpha)
    a = alpha[..., None]
    blended = old + a * (new - old)
    image[ry0:ry1, rx0:rx1, :ch] = np.where(a > 0, blended, old)
    return True


def paste_back(record: StitchRecord, crops, *, feather_percent: float = 4.5,
               colour_match: bool = False) -> np.ndarray:
    """Paste each crop into its original image, blended only inside the original mask.

    What is pasted is the *change* made to the crop, resized back to the frame and added to the
    original: ``original + alpha * uncrop(crop - crop_as_handed_out)``. An unchanged crop (or an
    unchanged part of one) therefore leaves the frame exactly as it was, also where the crop was
    shrunk (the frame's detail finer than the crop's pixels is kept) or where Lanczos overshoot was
    clamped. Crops that come back at another size than they were handed out are pasted as they are
    (``uncrop(crop)``) instead.

    Returns the (B, H, W, C) frames. Pixels where the mask is 0, and whole images whose box is
    ``empty``, are the original values, bit for bit."""
    c = _np(crops)
    if c.ndim == 3:
        c = c[None]
    n = len(record.boxes)
    if c.shape[0] != n:
        raise ContinuityError(f"{c.shape[0]} crops for a stitch record of {n}; paste the batch that came "
                              "from the same Crop For Inpaint", input="image")
    out = record.originals.copy()
    ch = min(out.shape[-1], c.shape[-1])
    ref = record.crops
    as_delta = ref is not None and ref.shape[:3] == c.shape[:3] and ref.shape[-1] >= ch
    for i, box in enumerate(record.boxes):
        rx0, ry0, rx1, ry1 = box.region
        paste_into(out[i], box, record.masks[i, ry0:ry1, rx0:rx1], c[i],
                   ref[i] if as_delta and ref is not None else None,
                   feather_percent=feather_percent, colour_match=colour_match)
    return out


def composite(base, new, mask) -> np.ndarray:
    """base * (1 - mask) + new * mask, batched; mask (B, H, W) or (H, W) in [0, 1]."""
    b = _np(base)
    n = _np(new)
    m = np.clip(_np(mask), 0.0, 1.0)
    if m.ndim == b.ndim - 1:
        m = m[..., None]
    out = b + m * (n - b)
    return np.where(m > 0, out, b).astype(np.float32)
