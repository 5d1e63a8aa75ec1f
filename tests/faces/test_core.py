"""Face analysis core: detectors, head pose, the built-in head mask and its bad inputs.

Photos: assets/faces (DeepFace unit-test images, MIT, Copyright (c) 2019 Sefik Ilkin Serengil;
see assets/faces/README.md)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from continuity.errors import ContinuityError, MissingModelError
from continuity.faces import (get_detector, get_parser, head_pose, load_analyzer, face_region_mask,
                              person_mask, mediapipe_available)
from continuity.faces import mediapipe_backend as mpb
from continuity.faces.masks import region_masks, grow_mask
from continuity.faces.draw import draw_faces, overlay

PORTRAITS = [f"img{i}" for i in range(1, 26)]   # every single-person portrait of the set
needs_mp = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")


def load(faces_dir, name, max_side=None):
    im = Image.open(faces_dir / f"{name}.jpg").convert("RGB")
    if max_side and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    return np.asarray(im)


@pytest.fixture(scope="module")
def mp_analyzer():
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed")
    return load_analyzer("mediapipe")


@pytest.mark.parametrize("backend", ["dlib", pytest.param("mediapipe", marks=needs_mp)])
@pytest.mark.parametrize("name", PORTRAITS)
def test_one_face_per_portrait(faces_dir, backend, name):
    rgb = load(faces_dir, name)
    faces = get_detector(backend).detect(rgb)
    assert len(faces) == 1
    f = faces[0]
    assert 0 < f.score <= 1 and f.width > 32 and f.landmarks5.shape == (5, 2)
    le, re, nose, ml, mr = f.landmarks5
    assert le[0] < re[0] and ml[0] < mr[0]                  # image-left first
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])  # eyes above nose above mouth
    x0, y0, x1, y1 = f.box
    assert x0 - 0.2 * f.width < nose[0] < x1 + 0.2 * f.width


@pytest.mark.parametrize("backend", ["dlib", pytest.param("mediapipe", marks=needs_mp)])
def test_two_faces_on_couple_many_on_group(faces_dir, backend):
    det = get_detector(backend)
    couple = det.detect(load(faces_dir, "couple", 1200))
    assert len(couple) == 2
    assert couple[0].area >= couple[1].area
    # the two people are side by side
    assert abs(couple[0].center[0] - couple[1].center[0]) > couple[0].width
    assert len(det.detect(load(faces_dir, "selfie-many-people"))) >= 3


def test_detector_cache_and_large_images(faces_dir):
    assert get_detector("dlib") is get_detector("dlib")
    rgb = load(faces_dir, "img13")            # 2048 px: detected on a downscaled copy
    f = get_detector("dlib").detect(rgb)[0]
    small = get_detector("dlib").detect(load(faces_dir, "img13", 1024))[0]
    # boxes are mapped back to full size
    assert f.box[0] == pytest.approx(small.box[0] * 2, abs=12) and f.width == pytest.approx(small.width * 2, rel=0.1)
    assert np.all(f.landmarks68[:, 0] > f.box[0] - 0.3 * f.width)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(ContinuityError, match="unknown face backend"):
        get_detector("nope")


@needs_mp
def test_head_pose_sign_follows_mirroring(faces_dir):
    rgb = load(faces_dir, "img17")
    for backend in ("dlib", "mediapipe"):
        det = get_detector(backend)
        a = det.detect(rgb)[0]
        b = det.detect(np.ascontiguousarray(rgb[:, ::-1]))[0]
        ya, pa, ra = head_pose(a)
        yb, pb, rb = head_pose(b)
        assert abs(ya) < 35 and abs(pa) < 35 and abs(ra) < 25
        assert abs(ya + yb) < 12          # mirrored: yaw changes sign
        assert abs(ra + rb) < 6           # and roll too


def _mask_checks(rgb, mask, face):
    h, w = rgb.shape[:2]
    assert mask.shape == (h, w) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    on = mask > 0.5
    # holds the 68 landmarks (found independently by dlib's detector), within 3 % of the face size
    dfaces = get_detector("dlib").detect(rgb)
    assert dfaces
    p68 = min(dfaces, key=lambda d: np.hypot(d.center[0] - face.center[0], d.center[1] - face.center[1])).landmarks68
    grown = grow_mask(on, 0.03 * max(face.width, face.height)) > 0
    xs = np.clip(np.round(p68[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(p68[:, 1]).astype(int), 0, h - 1)
    assert grown[ys, xs].all(), f"{(~grown[ys, xs]).sum()} landmarks outside"
    # reaches above the brows into the hair
    brow_top = p68[17:27, 1].min()
    face_h = p68[8, 1] - brow_top
    top = np.nonzero(on.any(1))[0][0]
    assert top < brow_top - 0.35 * face_h
    # stays off the far background and the corners
    cx, cy = face.center
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.hypot(xx - cx, yy - cy) > 2.2 * max(face.width, face.height) * 1.2
    assert not on[far].any()
    c = max(2, min(h, w) // 20)
    for corner in (on[:c, :c], on[:c, -c:], on[-c:, :c], on[-c:, -c:]):
        if not (face.box[0] < c or face.box[1] < c or face.box[2] > w - c):
            assert not corner.any()


# img22: dlib's 68-point fit (the independent reference) puts 9 jaw points on the neck, below the
# visible chin of this smiling face; the mask follows the real jaw. Kept visible as a strict xfail.
MASK_PORTRAITS = [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="dlib jaw fit on the neck"))
                  if n == "img22" else n for n in PORTRAITS]


@pytest.mark.parametrize("name", MASK_PORTRAITS)
def test_head_mask_on_portraits(faces_dir, mp_analyzer, name, artifacts_dir):
    rgb = load(faces_dir, name)
    res = region_masks(rgb, mp_analyzer)
    assert len(res.chosen) == 1
    _mask_checks(rgb, res.mask, res.chosen[0])
    assert {"skin", "hair"} <= set(res.per_region)
    Image.fromarray(overlay(rgb, res.mask, faces=res.chosen)).save(artifacts_dir / f"faces_mask_{name}.png")


def test_region_switches(faces_dir, mp_analyzer):
    rgb = load(faces_dir, "img17")
    face = mp_analyzer.detect(rgb)[0]
    full = face_region_mask(rgb, mp_analyzer) > 0.5
    skin = face_region_mask(rgb, mp_analyzer, regions=["skin"]) > 0.5
    hair = face_region_mask(rgb, mp_analyzer, regions=["hair"]) > 0.5
    face_only = face_region_mask(rgb, mp_analyzer, regions="face") > 0.5
    no_eyes = face_region_mask(rgb, mp_analyzer, regions=["skin", "brows", "nose", "mouth", "hair"]) > 0.5
    assert skin.sum() > 0 and hair.sum() > 0
    assert (skin & hair).sum() < 0.02 * skin.sum()                  # different regions
    assert face_only.sum() < full.sum() and not (face_only & ~full).any()
    assert hair.sum() + skin.sum() <= full.sum() * 1.02
    # hair is above the face, mostly
    assert np.nonzero(hair.any(1))[0][0] < np.nonzero(skin.any(1))[0][0]
    # eyes switched off: the eye centres are not in the mask, though fill_holes is on
    for x, y in face.landmarks5[:2]:
        assert not no_eyes[int(y), int(x)]
        assert full[int(y), int(x)]


def test_beard_found_where_there_is_one(faces_dir, mp_analyzer, artifacts_dir):
    rgb = load(faces_dir, "selfie-many-people")
    faces = mp_analyzer.detect(rgb)
    # the bearded man stands in the middle, top half of the photo (see the README of the photos)
    bearded = min(faces, key=lambda f: abs(f.center[0] - 270) + abs(f.center[1] - 200))
    beard = face_region_mask(rgb, faces, regions=["beard"], which="index", index=faces.index(bearded),
                             parser=mp_analyzer.parser) > 0.5
    chin_y = bearded.mesh[152, 1]
    assert beard.sum() > 0.05 * bearded.area
    assert beard[int(chin_y):].sum() > 0.3 * beard.sum()            # more than the lower face: under the chin
    Image.fromarray(overlay(rgb, beard.astype(np.float32))).save(artifacts_dir / "faces_beard.png")


def test_which_face(faces_dir, mp_analyzer):
    rgb = load(faces_dir, "couple", 1000)
    res_all = region_masks(rgb, mp_analyzer, which="all")
    assert len(res_all.faces) == 2 and len(res_all.chosen) == 2
    m0 = face_region_mask(rgb, mp_analyzer, which="largest") > 0.5
    m1 = face_region_mask(rgb, mp_analyzer, which="index", index=1) > 0.5
    allm = res_all.mask > 0.5
    assert m0.sum() > 0 and m1.sum() > 0 and (m0 & m1).sum() < 0.02 * m1.sum()
    assert ((m0 | m1) == allm).mean() > 0.999
    f1 = sorted(res_all.faces, key=lambda f: f.area)[0]
    assert m1[int(f1.center[1]), int(f1.center[0])]
    with pytest.raises(ContinuityError, match="index 5") as e:
        face_region_mask(rgb, mp_analyzer, which="index", index=5)
    assert e.value.input == "index"


def test_no_face_gives_empty_mask(mp_analyzer):
    rng = np.random.default_rng(0)
    for rgb in (np.full((300, 400, 3), 128, np.uint8), rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)):
        res = region_masks(rgb, mp_analyzer, grow=10, feather=4)
        assert res.faces == [] and res.mask.shape == rgb.shape[:2] and res.mask.max() == 0


def test_rgba_grey_float_inputs(faces_dir, mp_analyzer):
    rgb = load(faces_dir, "img25")
    ref = face_region_mask(rgb, mp_analyzer) > 0.5
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    assert ((face_region_mask(rgba, mp_analyzer) > 0.5) == ref).mean() > 0.99
    grey = rgb.astype(np.float32).mean(-1) / 255.0
    g = face_region_mask(grey, mp_analyzer) > 0.5
    assert g.shape == ref.shape and (g & ref).sum() > 0.7 * ref.sum()


def test_faces_at_the_border_and_tiny_and_huge(faces_dir, mp_analyzer):
    rgb = load(faces_dir, "img17")
    f = mp_analyzer.detect(rgb)[0]
    cut = np.ascontiguousarray(rgb[:, int(f.center[0]):])          # half the face cut off at the left
    m = face_region_mask(cut, mp_analyzer)
    assert m.shape == cut.shape[:2]
    if m.max() > 0:
        assert (m[:, 0] > 0.5).any()                               # the mask runs to the border
    tiny = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 12, rgb.shape[0] // 12)))
    mt = face_region_mask(tiny, mp_analyzer)                       # faces of ~20 px: no crash
    assert mt.shape == tiny.shape[:2]
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 4, rgb.shape[0] * 4)))
    mb = face_region_mask(big, mp_analyzer) > 0.5
    ms = face_region_mask(rgb, mp_analyzer) > 0.5
    down = np.asarray(Image.fromarray(mb.astype(np.uint8) * 255).resize(rgb.shape[1::-1])) > 127
    assert mb.shape == big.shape[:2]
    assert (down & ms).sum() / (down | ms).sum() > 0.8            # the same mask at full size


def test_grow_percent_and_feather(faces_dir, mp_analyzer):
    rgb = load(faces_dir, "img5")
    base = face_region_mask(rgb, mp_analyzer, regions="face")
    grown = face_region_mask(rgb, mp_analyzer, regions="face", grow=10, grow_unit="percent")
    shrunk = face_region_mask(rgb, mp_analyzer, regions="face", grow=-5)
    soft = face_region_mask(rgb, mp_analyzer, regions="face", feather=8)
    assert shrunk.sum() < base.sum() < grown.sum()
    assert not ((shrunk > 0.5) & (base < 0.5)).any() and not ((base > 0.5) & (grown < 0.5)).any()
    assert ((soft > 0.05) & (soft < 0.95)).sum() > 0 and set(np.unique(base)) <= {0.0, 1.0}
    with pytest.raises(ContinuityError):
        face_region_mask(rgb, mp_analyzer, regions=["tail"])


def test_person_mask(faces_dir):
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed")
    rgb = load(faces_dir, "img17")
    m = person_mask(rgb)
    f = get_detector("mediapipe").detect(rgb)[0]
    assert m.shape == rgb.shape[:2] and m[int(f.center[1]), int(f.center[0])] > 0.5


def test_without_mediapipe_landmarks_parser_and_message(faces_dir, monkeypatch):
    rgb = load(faces_dir, "img5")
    monkeypatch.setattr(mpb, "_mp", None)
    monkeypatch.setattr(mpb, "_mp_error", ImportError("No module named 'mediapipe'"))
    with pytest.raises(MissingModelError, match=r"pip install --no-deps mediapipe==0\.10\.21"):
        mpb.MediaPipeDetector()
    with pytest.raises(MissingModelError):
        person_mask(rgb)
    parser = get_parser("landmarks")
    res = region_masks(rgb, get_detector("dlib").detect(rgb), regions="face,hair,beard", parser=parser)
    assert res.unavailable == ("hair", "beard")
    assert res.mask.sum() > 0 and set(res.per_region) == {"skin", "brows", "eyes", "nose", "mouth"}


def test_previews_draw(faces_dir):
    rgb = load(faces_dir, "img25")
    faces = get_detector("dlib").detect(rgb)
    out = draw_faces(rgb, faces)
    assert out.shape == rgb.shape and (out != rgb).any() and (draw_faces(rgb, []) == rgb).all()
