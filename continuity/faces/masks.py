"""Face-region masks: the built-in head parser (face mesh + person segmentation) and
:func:`face_region_mask`, the one entry point the other stages call.

The built-in parser ("mediapipe") draws the face parts from the 478-point mesh (or the 68 dlib
points), and takes hair, ears, beard and neck from the person segmentation, clipped to
head-shaped zones around the face:

* hair: person pixels in an ellipse around the head, above the jaw, minus the face; long hair is
  followed below the chin beside the face when its colour matches the hair above the forehead;
* ears: person pixels in an ellipse beside each cheek, outside the face outline;
* beard: person pixels in a band under the jaw line whose colour is not skin (a skin colour model
  is taken from the cheeks), connected to the jaw; plus non-skin pixels of the lower face;
* neck: skin-coloured person pixels under the jaw.

The "landmarks" parser (no MediaPipe) gives only the face parts (skin, brows, eyes, nose, mouth).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from ..arrays import mask_bbox
from ..errors import ContinuityError
from . import REGIONS, FACE_PARTS, DEFAULT_REGIONS
from .base import Face, as_uint8_rgb

WORK_FACE = 128.0
BEARD_COVER = 0.2           # share of the lower face that must be beard-coloured          # face height (px) at which hair, ears, beard and neck are worked out
WHICH = ("largest", "most_confident", "index", "all")


# --------------------------------------------------------------------------- face geometry

@dataclass
class Geometry:
    oval: np.ndarray                  # (N, 2) polygon of the face outline (forehead to chin)
    parts: dict                       # "eyes"/"brows"/"nose"/"mouth" -> list of (N, 2) polygons
    jaw: np.ndarray | None            # (M, 2) from one cheek through the chin to the other
    cheeks: tuple | None              # (image-left cheek, image-right cheek) points, by the ears
    skin_samples: np.ndarray          # (K, 2) points on bare skin (cheeks, forehead)
    center: np.ndarray
    up: np.ndarray                    # unit vector from chin to forehead
    height: float                     # forehead top to chin
    width: float                      # cheek to cheek
    source: str = "box"


def _unit(v):
    n = float(np.hypot(*v))
    return v / n if n > 1e-6 else np.array([0.0, -1.0])


def _geometry_from_mesh(m: np.ndarray) -> Geometry:
    from . import mediapipe_backend as mpb
    p = m[:, :2].astype(np.float32)
    up = _unit(p[mpb.FOREHEAD_TOP] - p[mpb.CHIN])
    parts = {
        "eyes": [p[mpb.LEFT_EYE], p[mpb.RIGHT_EYE]],
        "brows": [cv2.convexHull(p[mpb.LEFT_BROW]).reshape(-1, 2), cv2.convexHull(p[mpb.RIGHT_BROW]).reshape(-1, 2)],
        "nose": [cv2.convexHull(p[mpb.NOSE]).reshape(-1, 2)],
        "mouth": [p[mpb.LIPS_OUTER]],
    }
    a, b = p[mpb.CHEEK_RIGHT], p[mpb.CHEEK_LEFT]
    cheeks = (a, b) if a[0] <= b[0] else (b, a)
    jaw = p[mpb.JAW]
    if jaw[0, 0] > jaw[-1, 0]:
        jaw = jaw[::-1]
    samples = p[[50, 280, 151, 205, 425, 108, 337]]       # cheeks and forehead
    oval = p[mpb.FACE_OVAL]
    oc = oval.mean(0)
    oval = oc + (oval - oc) * 1.03            # the mesh outline sits just inside the jaw line
    return Geometry(oval=oval, parts=parts, jaw=jaw, cheeks=cheeks, skin_samples=samples,
                    center=p[mpb.FACE_OVAL].mean(0), up=up,
                    height=float(np.hypot(*(p[mpb.FOREHEAD_TOP] - p[mpb.CHIN]))),
                    width=float(np.hypot(*(b - a))), source="mesh")


def _geometry_from_68(p: np.ndarray) -> Geometry:
    p = p.astype(np.float32)
    jaw = p[0:17]
    brow_mid = p[17:27].mean(0)
    chin = p[8]
    up = _unit(brow_mid - chin)
    face_h = float(np.hypot(*(brow_mid - chin)))
    forehead = p[26:16:-1] + up * 0.45 * face_h             # brows raised toward the hairline
    oval = np.concatenate([jaw, forehead])
    thick = 0.06 * face_h
    brows = [np.concatenate([p[17:22] + up * thick, p[21:16:-1] - up * thick * 0.5]),
             np.concatenate([p[22:27] + up * thick, p[26:21:-1] - up * thick * 0.5])]
    nose = cv2.convexHull(np.concatenate([p[27:36], p[[31, 35]] - up * 0.03 * face_h])).reshape(-1, 2)
    parts = {"eyes": [p[36:42], p[42:48]], "brows": brows, "nose": [nose], "mouth": [p[48:60]]}
    samples = np.stack([(p[1] + p[31]) / 2, (p[15] + p[35]) / 2, brow_mid + up * 0.2 * face_h,
                        (p[3] + p[48]) / 2, (p[13] + p[54]) / 2])
    height = face_h * 1.45
    return Geometry(oval=oval, parts=parts, jaw=jaw, cheeks=(p[0], p[16]), skin_samples=samples,
                    center=oval.mean(0), up=up, height=height, width=float(np.hypot(*(p[16] - p[0]))),
                    source="landmarks68")


def _ellipse_poly(c, ax, ay, angle_deg=0.0, n=40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([ax * np.cos(t), ay * np.sin(t)], 1)
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (pts @ rot.T + np.asarray(c, dtype=np.float64)).astype(np.float32)


def _geometry_from_box(face: Face) -> Geometry:
    x0, y0, x1, y1 = face.box
    w, h = x1 - x0, y1 - y0
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    oval = _ellipse_poly(c - [0, 0.05 * h], 0.5 * w, 0.62 * h)
    parts: dict[str, list] = {k: [] for k in ("eyes", "brows", "nose", "mouth")}
    if face.landmarks5 is not None:
        l5 = np.asarray(face.landmarks5, dtype=np.float32)
        iod = float(np.hypot(*(l5[1] - l5[0]))) or 0.3 * w
        parts["eyes"] = [_ellipse_poly(l5[0], 0.22 * iod, 0.1 * iod), _ellipse_poly(l5[1], 0.22 * iod, 0.1 * iod)]
        parts["brows"] = [_ellipse_poly(l5[0] - [0, 0.3 * iod], 0.3 * iod, 0.07 * iod),
                          _ellipse_poly(l5[1] - [0, 0.3 * iod], 0.3 * iod, 0.07 * iod)]
        parts["nose"] = [_ellipse_poly((l5[2] + (l5[0] + l5[1]) / 2) / 2 + [0, 0.1 * iod], 0.2 * iod, 0.4 * iod)]
        mc = (l5[3] + l5[4]) / 2
        parts["mouth"] = [_ellipse_poly(mc, 0.55 * float(np.hypot(*(l5[4] - l5[3]))) + 1, 0.15 * iod)]
    samples = np.stack([c + [-0.25 * w, 0.05 * h], c + [0.25 * w, 0.05 * h], c - [0, 0.35 * h]])
    return Geometry(oval=oval, parts=parts, jaw=None, cheeks=None, skin_samples=samples, center=c,
                    up=np.array([0.0, -1.0], dtype=np.float32), height=1.25 * h, width=w, source="box")


def face_geometry(face: Face) -> Geometry:
    if face.mesh is not None:
        return _geometry_from_mesh(np.asarray(face.mesh))
    if face.landmarks68 is not None:
        return _geometry_from_68(np.asarray(face.landmarks68))
    return _geometry_from_box(face)


# --------------------------------------------------------------------------- drawing helpers

class _Canvas:
    """Drawing in a region of interest of the image, at a working scale, with full-size output.

    Geometry is given in full-image pixels; local rasters are (ROI size x ``scale``).
    """

    def __init__(self, shape, roi, scale: float = 1.0):
        self.h, self.w = shape[:2]
        x0, y0, x1, y1 = roi
        self.x0, self.y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        self.x1, self.y1 = min(self.w, int(np.ceil(x1))), min(self.h, int(np.ceil(y1)))
        self.x1, self.y1 = max(self.x1, self.x0 + 1), max(self.y1, self.y0 + 1)
        self.full_shape = (self.y1 - self.y0, self.x1 - self.x0)
        self.scale = float(scale)
        self.shape = (max(1, round(self.full_shape[0] * scale)), max(1, round(self.full_shape[1] * scale)))
        self.sx = self.shape[1] / self.full_shape[1]
        self.sy = self.shape[0] / self.full_shape[0]

    def zeros(self):
        return np.zeros(self.shape, np.uint8)

    def local(self, pts) -> np.ndarray:
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        return (p - [self.x0, self.y0]) * [self.sx, self.sy]

    def poly(self, polys, into=None):
        m = self.zeros() if into is None else into
        pts = [np.round(self.local(p) * 4).astype(np.int32) for p in polys if p is not None and len(p) >= 3]
        if pts:
            cv2.fillPoly(m, pts, 1, lineType=cv2.LINE_8, shift=2)
        return m

    def crop(self, full, interpolation=cv2.INTER_AREA):
        c = np.ascontiguousarray(full[self.y0:self.y1, self.x0:self.x1])
        if c.shape[:2] != self.shape:
            c = cv2.resize(c, (self.shape[1], self.shape[0]), interpolation=interpolation)
        return c

    def crop_small(self, small, fx: float, fy: float):
        """The ROI from a low-resolution copy of a full-size map (``small`` = full x (fx, fy))."""
        sh, sw = small.shape[:2]
        x0, x1 = min(sw - 1, int(self.x0 * fx)), max(int(self.x0 * fx) + 1, min(sw, int(np.ceil(self.x1 * fx))))
        y0, y1 = min(sh - 1, int(self.y0 * fy)), max(int(self.y0 * fy) + 1, min(sh, int(np.ceil(self.y1 * fy))))
        c = np.ascontiguousarray(small[y0:y1, x0:x1])
        # map the small crop onto this canvas exactly (affine: small pixel -> local pixel)
        ax = self.sx / fx
        ay = self.sy / fy
        M = np.array([[ax, 0, ((x0 + 0.5) / fx - self.x0) * self.sx - 0.5],
                      [0, ay, ((y0 + 0.5) / fy - self.y0) * self.sy - 0.5]], dtype=np.float32)
        return cv2.warpAffine(c, M, (self.shape[1], self.shape[0]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def full(self, local):
        out = np.zeros((self.h, self.w), np.uint8)
        m = local.astype(np.uint8)
        if m.shape != self.full_shape:
            m = cv2.resize(m * 255, (self.full_shape[1], self.full_shape[0]), interpolation=cv2.INTER_LINEAR)
            m = (m >= 128).astype(np.uint8)
        out[self.y0:self.y1, self.x0:self.x1] = m
        return out

    def coords(self):
        yy, xx = np.mgrid[0:self.shape[0], 0:self.shape[1]].astype(np.float32)
        return self.x0 + (xx + 0.5) / self.sx - 0.5, self.y0 + (yy + 0.5) / self.sy - 0.5


def _colour_distance(lab: np.ndarray, samples: np.ndarray, weights=(0.5, 1.0, 1.0)) -> np.ndarray:
    """Per-pixel distance to the colour distribution of ``samples`` (N, 3) Lab uint8, in std units
    (diagonal; one look-up table per channel, so it costs three table look-ups per pixel)."""
    samples = samples.astype(np.float32)
    mean = samples.mean(0)
    std = np.maximum(samples.std(0), (4.0, 3.0, 3.0))
    v = np.arange(256, dtype=np.float32)[:, None]
    lut = (((v - mean) / std * np.asarray(weights, np.float32)) ** 2).astype(np.float32)   # (256, 3)
    d2 = cv2.LUT(lab, lut.reshape(1, 256, 3))
    return np.sqrt(d2[..., 0] + d2[..., 1] + d2[..., 2])


def _keep_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Connected components of ``mask`` that touch ``seed``."""
    if not mask.any():
        return mask
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    ids = np.unique(lab[(seed > 0) & (mask > 0)])
    ids = ids[ids > 0]
    return np.isin(lab, ids).astype(np.uint8) if len(ids) else np.zeros_like(mask, np.uint8)


# --------------------------------------------------------------------------- the built-in parser

class BuiltinParser:
    """Head regions from landmarks (+ person segmentation when MediaPipe is there)."""

    def __init__(self, use_mediapipe: bool = True, person_threshold: float = 0.5):
        self.use_mediapipe = use_mediapipe
        self.person_threshold = person_threshold
        self.name = "mediapipe" if use_mediapipe else "landmarks"
        self.regions = REGIONS[:9] if use_mediapipe else FACE_PARTS

    def person(self, rgb):
        """Person segmentation at low resolution: (mask, fx, fy) with fx, fy = small / full size."""
        from .mediapipe_backend import person_mask_small
        return person_mask_small(rgb)

    def parse(self, rgb: np.ndarray, face: Face, faces: list[Face] | None = None, person: np.ndarray | None = None,
              want=None) -> dict[str, np.ndarray]:
        """Masks of ``face``'s regions, each (H, W) uint8 (0/1), at the image's size."""
        rgb = as_uint8_rgb(rgb)
        want = set(self.regions if want is None else want) & set(self.regions)
        if self.use_mediapipe and face.mesh is None:
            from .mediapipe_backend import add_mesh
            add_mesh(rgb, face)
        g = face_geometry(face)
        F, W = max(g.height, 4.0), max(g.width, 4.0)
        up = g.up
        # Region of interest: generous around the head (hair may fall to the shoulders).
        pts = np.concatenate([g.oval, g.oval + up * 0.9 * F, g.oval - up * 1.3 * F,
                              g.oval + [[1.3 * W, 0]], g.oval - [[1.3 * W, 0]]])
        roi = (*pts.min(0), *(pts.max(0) + 1))
        out: dict[str, np.ndarray] = {}
        # face parts: polygons, drawn at full size around the face
        fpts = np.concatenate([g.oval] + [q for v in g.parts.values() for q in v])
        cf = _Canvas(rgb.shape, (*fpts.min(0), *(fpts.max(0) + 1)))
        oval_f = cf.poly([g.oval])
        face_parts = np.zeros_like(oval_f)
        local = {}
        for k in ("eyes", "brows", "nose", "mouth"):
            local[k] = cf.poly(g.parts.get(k, []))
            face_parts |= local[k]
        local["skin"] = oval_f & (1 - face_parts)
        for k, v in local.items():
            if k in want:
                out[k] = cf.full(v)
        # head regions: at a working scale (face about WORK_FACE px high), then back to full size
        if self.use_mediapipe and want & {"hair", "ears", "beard", "neck"}:
            cv_ = _Canvas(rgb.shape, roi, scale=min(1.0, WORK_FACE / F))
            head = self._head(rgb, face, faces or [], g, cv_, cv_.poly([g.oval]), person)
            for k, v in head.items():
                if k in want:
                    out[k] = cv_.full(v)
        return out

    def _head(self, rgb, face, faces, g: Geometry, cv_: _Canvas, oval, person):
        if person is None:
            person = self.person(rgb)
        per = (cv_.crop_small(*person) >= self.person_threshold).astype(np.uint8)
        roi_rgb = np.ascontiguousarray(cv_.crop(rgb, cv2.INTER_LINEAR))
        lab = cv2.cvtColor(roi_rgb, cv2.COLOR_RGB2LAB)
        F, W, up = g.height, g.width, g.up
        right = np.array([-up[1], up[0]])                    # image-right direction of the face
        angle = float(np.degrees(np.arctan2(right[1], right[0])))
        # other faces are not ours: their outline, and every pixel nearer to them (in face sizes)
        xx, yy = cv_.coords()
        others = cv_.zeros()
        own = np.hypot(xx - g.center[0], yy - g.center[1]) / F
        for f in faces:
            if f is face:
                continue
            og = face_geometry(f)
            oang = float(np.degrees(np.arctan2(og.up[0], -og.up[1])))
            others = cv_.poly([_ellipse_poly(og.center, 0.6 * og.width, 0.7 * og.height, oang)], into=others)
            others |= (np.hypot(xx - og.center[0], yy - og.center[1]) / max(og.height, 4.0) < own).astype(np.uint8)
        free = per & (1 - others)
        S = cv_.scale                                          # local pixels per image pixel
        k = max(1, int(round(0.02 * F * S)))
        oval_d = cv2.dilate(oval, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        # skin colour from the cheeks / forehead
        xs = np.clip(np.round(cv_.local(g.skin_samples)).astype(int), 0, [cv_.shape[1] - 1, cv_.shape[0] - 1])
        r = max(1, int(0.03 * F * S))
        skin_px = np.concatenate([lab[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].reshape(-1, 3) for x, y in xs])
        skin_d = _colour_distance(lab, skin_px)
        # under the jaw: the polygon from the jaw line downward
        if g.jaw is not None:
            jaw = g.jaw
        else:
            jaw = g.oval[np.argsort(-(g.oval @ -up))[: max(3, len(g.oval) // 2)]]
            jaw = jaw[np.argsort(jaw @ right)]
        below = cv_.poly([np.concatenate([jaw, [jaw[-1] - up * 2 * F, jaw[0] - up * 2 * F]])])
        chin_pt = jaw[np.argmax(jaw @ -up)]
        dx, dy = xx - chin_pt[0], yy - chin_pt[1]
        height_above_chin = dx * up[0] + dy * up[1]        # > 0 above the chin
        res = {}
        # ---- ears
        if g.cheeks is not None:
            ears = []
            for pt, side in ((g.cheeks[0], -1), (g.cheeks[1], 1)):
                c = pt + right * side * 0.07 * W + up * 0.02 * F
                ears.append(_ellipse_poly(c, 0.11 * W, 0.17 * F, angle))
            ear = cv_.poly(ears) & free & (1 - oval_d)
        else:
            ear = cv_.zeros()
        res["ears"] = ear
        # ---- beard: non-skin person pixels in a band under the jaw, connected to it
        lower = (height_above_chin < 0.45 * F)
        band_out = []
        for p in jaw:
            d = _unit(p - g.center)
            depth = 0.12 + 0.25 * max(0.0, float(np.dot(-up, d)))
            band_out.append(p + d * depth * F)
        band = cv_.poly([np.concatenate([jaw, np.array(band_out[::-1])])])
        # a beard is hair: not skin-coloured, and textured (shadowed skin is smooth)
        L = lab[..., 0].astype(np.float32)
        kt = max(3, int(round(0.03 * F * S)) | 1)
        var = cv2.blur(L * L, (kt, kt)) - cv2.blur(L, (kt, kt)) ** 2
        tex = np.sqrt(np.maximum(var, 0))
        sx = np.clip(np.round(cv_.local(g.skin_samples)).astype(int), 0, [cv_.shape[1] - 1, cv_.shape[0] - 1])
        skin_tex = float(np.median(tex[sx[:, 1], sx[:, 0]]))
        textured = (tex > max(6.0, 2.0 * skin_tex)).astype(np.uint8)
        not_skin = ((skin_d > 6.0) | ((skin_d > 3.0) & (textured > 0))).astype(np.uint8)
        beard_out = band & free & not_skin & (1 - oval) & lower.astype(np.uint8)
        jaw_line = np.zeros_like(oval)
        cv2.polylines(jaw_line, [np.round(cv_.local(jaw)).astype(np.int32)], False, 1, thickness=max(3, k * 2))
        ko = max(3, int(round(0.05 * F * S)) | 1)                      # beards are thick, jaw edges thin
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko))
        beard_out = cv2.morphologyEx(beard_out, cv2.MORPH_OPEN, kernel)
        beard_out = _keep_touching(beard_out, jaw_line)
        mouth_level = (height_above_chin < 0.4 * F).astype(np.uint8)
        beard_in = oval & not_skin & mouth_level & (1 - cv_.poly(g.parts.get("mouth", [])))
        beard_in = cv2.morphologyEx(beard_in, cv2.MORPH_OPEN, kernel)
        # only call it a beard when the lower face itself is covered by hair (a beard grows on the
        # face first): then follow it under the jaw; shadows and collars alone are not a beard
        lower_face = oval & mouth_level & (1 - cv_.poly(g.parts.get("mouth", [])))
        covered = beard_in.sum() / max(1, lower_face.sum())
        beard = beard_out | beard_in if covered >= BEARD_COVER else np.zeros_like(beard_in)
        res["beard"] = beard
        # ---- neck: skin-coloured person pixels under the jaw
        neck_zone = below & (height_above_chin > -0.9 * F).astype(np.uint8)
        res["neck"] = neck_zone & free & (skin_d <= 4.0).astype(np.uint8) & (1 - beard) & (1 - oval)
        # ---- hair: the head ellipse above the chin, minus face, ears, beard and the area under the jaw
        head_c = g.center + up * 0.22 * F
        head = cv_.poly([_ellipse_poly(head_c, 0.95 * W, 0.9 * F, angle)])
        core = head & free & (1 - oval) & (1 - below) & (height_above_chin > 0).astype(np.uint8) & (1 - ear)
        # hair colour from the part above the brows
        brow_level = (height_above_chin > 0.75 * F)
        sample = core.astype(bool) & brow_level
        hair = core
        if sample.sum() > 20:
            hair_d = _colour_distance(lab, lab[sample], weights=(0.7, 1.0, 1.0))
            # long hair: below the chin beside the face, same colour as the hair, connected to it
            side = free & (1 - below) & (height_above_chin <= 0).astype(np.uint8) & \
                (height_above_chin > -1.0 * F).astype(np.uint8)
            lateral = np.abs(dx * right[0] + dy * right[1]) < 1.0 * W
            ext = side & lateral.astype(np.uint8) & (hair_d < 2.5).astype(np.uint8) & (1 - beard)
            ext = cv2.morphologyEx(ext, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            hair = core | _keep_touching(ext, cv2.dilate(core, np.ones((3, 3), np.uint8)))
        res["hair"] = hair & (1 - beard)
        return res


# --------------------------------------------------------------------------- keeping masks on their person

HEAD_LIMITED = ("ears", "hair", "beard", "neck", "hat")   # regions that can spill onto the next person
HEAD_LATERAL = 1.0          # head ellipse half-width, in face widths (cheek to cheek)
HEAD_UP = 1.55              # head top above the chin, in face heights (forehead top to chin)
BELOW_CHIN = 0.5            # hair, beard and neck reach this far under the chin (face heights) ...
BELOW_LATERAL = 0.8         # ... within this lateral distance of the face's axis (face widths)
BODY_LATERAL = 1.6          # another person's body: under their chin, this wide each side (their face widths)


def _frame(g: Geometry, xx: np.ndarray, yy: np.ndarray):
    """(lateral, height above the chin) of pixel coordinates, in face widths and face heights."""
    up = g.up
    right = np.array([-up[1], up[0]])
    if g.jaw is not None:
        chin = g.jaw[np.argmax(g.jaw @ -up)]
    else:
        chin = g.oval[np.argmax(g.oval @ -up)]
    dx, dy = xx - chin[0], yy - chin[1]
    cx = float((g.center - chin) @ right)        # the face axis passes through the centre, not the chin
    lat = (dx * right[0] + dy * right[1] - cx) / max(g.width, 4.0)
    hgt = (dx * up[0] + dy * up[1]) / max(g.height, 4.0)
    return lat, hgt


def _head_radius(lat: np.ndarray, hgt: np.ndarray) -> np.ndarray:
    """Elliptical distance from the head's centre: 1 on the head ellipse (chin to HEAD_UP above it,
    HEAD_LATERAL each side), so heads of different sizes compare fairly."""
    half = HEAD_UP / 2
    return np.sqrt((lat / HEAD_LATERAL) ** 2 + ((hgt - half) / half) ** 2)


def _head_zone(lat: np.ndarray, hgt: np.ndarray) -> np.ndarray:
    """The head: its ellipse, plus a band under the chin beside the neck."""
    under = (hgt <= 0) & (hgt > -BELOW_CHIN) & (np.abs(lat) < BELOW_LATERAL)
    return (_head_radius(lat, hgt) <= 1.0) | under


def head_bound(shape, face: Face, faces: list[Face] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Where ``face``'s hair, ears, beard and neck may be: (bound, roi) with ``bound`` a 0/1 uint8
    array over ``roi`` = (x0, y0, x1, y1) in image pixels (everything outside the roi is out).

    The bound is the face's own head zone (an ellipse from the chin to 1.55 face heights above it,
    one face width each side of its axis, plus a band half a face height under the chin beside the
    neck), minus what belongs to the other faces: their head zones where a pixel is nearer to their
    head than to this one (elliptical distances in head sizes), and their bodies (under their chin, 1.6 of their
    face widths each side) except inside this face's head ellipse above its chin."""
    g = face_geometry(face)
    F, W = max(g.height, 4.0), max(g.width, 4.0)
    pts = np.concatenate([g.oval + g.up * HEAD_UP * F, g.oval - g.up * BELOW_CHIN * F,
                          g.oval + [[HEAD_LATERAL * W, 0]], g.oval - [[HEAD_LATERAL * W, 0]]])
    cv_ = _Canvas(shape, (*pts.min(0), *(pts.max(0) + 1)), scale=min(1.0, WORK_FACE / F))
    xx, yy = cv_.coords()
    lat, hgt = _frame(g, xx, yy)
    own = _head_zone(lat, hgt)
    own_core = own & (hgt > 0)
    own_d = _head_radius(lat, hgt)
    bound = own.copy()
    for f in faces or []:
        if f is face:
            continue
        og = face_geometry(f)
        olat, ohgt = _frame(og, xx, yy)
        their_d = _head_radius(olat, ohgt)
        bound &= ~(_head_zone(olat, ohgt) & (their_d < own_d))
        bound &= ~((ohgt <= 0) & (np.abs(olat) < BODY_LATERAL) & ~own_core)
    full = cv_.full(bound.astype(np.uint8))
    x0, y0, x1, y1 = cv_.x0, cv_.y0, cv_.x1, cv_.y1
    return np.ascontiguousarray(full[y0:y1, x0:x1]), (x0, y0, x1, y1)


def limit_to_head(parts: dict[str, np.ndarray], face: Face, faces: list[Face] | None = None) -> dict[str, np.ndarray]:
    """The regions of a parse with hair, ears, beard, neck and hat kept on ``face``'s own head:
    inside :func:`head_bound` and connected to the face (its outline and parts), so a jacket, a
    neighbour's hair or a background blob the parser took for hair is dropped. Face parts (skin,
    eyes, ...) pass as they are. Works on any parser's output (0/1 masks at the image size)."""
    limited = [k for k in HEAD_LIMITED if k in parts and np.asarray(parts[k]).any()]
    if not limited:
        return parts
    some = np.asarray(parts[limited[0]])
    shape = some.shape[:2]
    bound, (x0, y0, x1, y1) = head_bound(shape, face, faces)
    g = face_geometry(face)
    # the face itself seeds the connectivity: its outline, and its parts where the parser gave them
    seed = np.zeros((y1 - y0, x1 - x0), np.uint8)
    oval = np.round((g.oval - [x0, y0]) * 4).astype(np.int32)
    cv2.fillPoly(seed, [oval], 1, lineType=cv2.LINE_8, shift=2)
    for k in FACE_PARTS:
        if k in parts:
            seed |= (np.asarray(parts[k])[y0:y1, x0:x1] > 0).astype(np.uint8)
    r = max(1, int(round(0.04 * g.height)))
    seed = np.asarray(cv2.dilate(seed, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))),
                      np.uint8)
    local = {k: (np.asarray(parts[k])[y0:y1, x0:x1] > 0).astype(np.uint8) & bound for k in limited}
    union = np.zeros_like(seed)
    for v in local.values():
        union |= v
    keep = _keep_touching(union | seed, seed) & union
    out = dict(parts)
    for k, v in local.items():
        m = np.zeros(shape, np.uint8)
        m[y0:y1, x0:x1] = v & keep
        out[k] = m
    return out


# --------------------------------------------------------------------------- selection and the mask

def select_faces(faces: list[Face], which: str = "largest", index: int = 0) -> list[Face]:
    """Pick faces: "largest", "most_confident", "index" (0 = largest) or "all"."""
    if which not in WHICH:
        raise ContinuityError(f"unknown face choice '{which}'; choose one of {', '.join(WHICH)}", input="which")
    if not faces:
        return []
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    if which == "all":
        return ordered
    if which == "largest":
        return ordered[:1]
    if which == "most_confident":
        return [max(faces, key=lambda f: f.score)]
    if index < 0 or index >= len(ordered):
        raise ContinuityError(f"face index {index} asked for, but {len(ordered)} face(s) were found "
                              f"(indices 0-{len(ordered) - 1}, largest first)", input="index")
    return [ordered[index]]


def normalise_regions(regions) -> tuple[str, ...]:
    if isinstance(regions, str):
        regions = [r.strip() for r in regions.replace("+", ",").split(",") if r.strip()]
    out = []
    for r in regions:
        if r == "face":
            out += [p for p in FACE_PARTS if p not in out]
        elif r in REGIONS:
            if r not in out:
                out.append(r)
        else:
            raise ContinuityError(f"unknown region '{r}'; choose from face, {', '.join(REGIONS)}", input="regions")
    return tuple(out)


def _bbox(mask: np.ndarray, pad: int = 0):
    """The mask's bounding box grown by ``pad`` on every side, inside the mask; None if it is empty."""
    bb = mask_bbox(mask)
    if bb is None:
        return None
    h, w = mask.shape
    return max(0, bb[0] - pad), max(0, bb[1] - pad), min(w, bb[2] + pad), min(h, bb[3] + pad)


def _fill_holes(mask: np.ndarray, keep_out: np.ndarray | None = None) -> np.ndarray:
    """Fill enclosed holes of a 0/1 uint8 mask, except where ``keep_out`` is set."""
    bb = _bbox(mask, 1)
    if bb is None:
        return mask
    x0, y0, x1, y1 = bb
    crop = mask[y0:y1, x0:x1]
    filled = ndimage.binary_fill_holes(crop).astype(np.uint8)
    if keep_out is not None:
        filled = np.where(keep_out[y0:y1, x0:x1] > 0, crop, filled)
    out = mask.copy()
    out[y0:y1, x0:x1] = filled
    return out


def grow_mask(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Grow (> 0) or shrink (< 0) a 0/1 mask by ``pixels`` (Euclidean distance); uint8 out."""
    m = (np.asarray(mask) > 0.5).astype(np.uint8)
    if abs(pixels) < 0.5 or not m.any():
        return m
    if pixels > 0:
        r = int(np.ceil(pixels)) + 2
        bb = _bbox(m, r)
        x0, y0, x1, y1 = bb
        dist = cv2.distanceTransform(1 - m[y0:y1, x0:x1], cv2.DIST_L2, 5)
        out = np.zeros_like(m)
        out[y0:y1, x0:x1] = (dist <= pixels)
        return out
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    return (dist > -pixels).astype(np.uint8)


def feather_mask(mask: np.ndarray, pixels: float) -> np.ndarray:
    """Soft edges: Gaussian blur with sigma ``pixels`` / 2; float32 out."""
    if pixels <= 0 or not mask.any():
        return mask.astype(np.float32)
    sigma = pixels / 2.0
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma), 0.0, 1.0)


@dataclass
class MaskResult:
    mask: np.ndarray                         # (H, W) float32
    faces: list[Face]                        # all faces found
    chosen: list[Face]                       # the faces the mask covers
    regions: tuple[str, ...]                 # regions asked for
    unavailable: tuple[str, ...] = ()        # asked for but the parser cannot give them
    per_region: dict = field(default_factory=dict)


def region_masks(rgb: np.ndarray, faces_or_analyzer, regions=DEFAULT_REGIONS, which: str = "largest",
                 index: int = 0, grow: float = 0.0, grow_unit: str = "px", feather: float = 0.0,
                 fill_holes: bool = True, parser=None, image_index: int = 0,
                 chosen: list[Face] | None = None, person=None) -> MaskResult:
    """:func:`face_region_mask` with everything it found (faces, chosen faces, unavailable regions).

    ``chosen``: the faces to mask, picked by the caller (e.g. the character's face by identity);
    it replaces ``which`` and ``index``. An empty list gives an empty mask. ``person``: the image's
    person segmentation as ``parser.person(rgb)`` gave it, when the caller masks several faces of one
    image one at a time (it is then worked out once)."""
    rgb = as_uint8_rgb(rgb)
    h, w = rgb.shape[:2]
    regions = normalise_regions(regions)
    if grow_unit not in ("px", "percent"):
        raise ContinuityError(f"grow unit '{grow_unit}' is not 'px' or 'percent'", input="grow_unit")
    if isinstance(faces_or_analyzer, (list, tuple)):
        faces = list(faces_or_analyzer)
        if parser is None:
            from . import get_parser
            parser = get_parser("auto")
    else:
        faces = faces_or_analyzer.detect(rgb, image_index=image_index)
        parser = parser or faces_or_analyzer.parser
    unavailable = tuple(r for r in regions if r not in parser.regions)
    chosen = select_faces(faces, which, index) if chosen is None else list(chosen)
    per_region: dict[str, np.ndarray] = {}
    total = np.zeros((h, w), np.uint8)
    for sel in face_masks(rgb, faces, chosen, regions=regions, grow=grow, grow_unit=grow_unit,
                          fill_holes=fill_holes, parser=parser, per_region=per_region, person=person):
        total |= sel
    total = feather_mask(total, feather)
    return MaskResult(mask=total, faces=faces, chosen=chosen, regions=regions, unavailable=unavailable,
                      per_region=per_region)


def face_masks(rgb: np.ndarray, faces: list[Face], chosen: list[Face], *, regions=DEFAULT_REGIONS,
               grow: float = 0.0, grow_unit: str = "px", fill_holes: bool = True, parser=None,
               per_region: dict | None = None, person=None) -> list[np.ndarray]:
    """One (H, W) uint8 0/1 mask per face of ``chosen`` (in that order), before feathering.

    ``faces`` are all the faces of the image (a face's hair and ears stop where another face's
    begin); the person segmentation is computed once for all of them (or given as ``person``) and
    nothing is re-sorted. ``per_region`` (a dict), when given, collects the union of each region."""
    rgb = as_uint8_rgb(rgb)
    h, w = rgb.shape[:2]
    regions = normalise_regions(regions)
    if grow_unit not in ("px", "percent"):
        raise ContinuityError(f"grow unit '{grow_unit}' is not 'px' or 'percent'", input="grow_unit")
    if parser is None:
        from . import get_parser
        parser = get_parser("auto")
    wanted = tuple(r for r in regions if r in parser.regions)
    if person is None and chosen and getattr(parser, "use_mediapipe", False) and \
            set(wanted) & {"hair", "ears", "beard", "neck"}:
        person = parser.person(rgb)
    out = []
    for f in chosen:
        kw = {"person": person} if person is not None else {}
        parts = limit_to_head(parser.parse(rgb, f, faces=faces, want=set(parser.regions), **kw), f, faces)
        sel = np.zeros((h, w), np.uint8)
        rest = np.zeros((h, w), np.uint8)
        for name, m in parts.items():
            if name in wanted:
                sel |= m
                if per_region is not None:
                    per_region[name] = per_region[name] | m if name in per_region else m
            else:
                rest |= m
        if fill_holes:
            sel = _fill_holes(sel, keep_out=rest)
        amount = grow * max(f.width, f.height) / 100.0 if grow_unit == "percent" else grow
        out.append(grow_mask(sel, amount))
    return out


def face_region_mask(rgb: np.ndarray, faces_or_analyzer, regions=DEFAULT_REGIONS, which: str = "largest",
                     index: int = 0, grow: float = 0.0, grow_unit: str = "px", feather: float = 0.0,
                     fill_holes: bool = True, parser=None) -> np.ndarray:
    """(H, W) float32 mask of the chosen face(s)' regions; all zero when there is no face.

    See the module docstring of ``continuity.faces`` for the arguments.
    """
    return region_masks(rgb, faces_or_analyzer, regions=regions, which=which, index=index, grow=grow,
                        grow_unit=grow_unit, feather=feather, fill_holes=fill_holes, parser=parser).mask
