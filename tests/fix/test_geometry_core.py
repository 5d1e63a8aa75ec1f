"""Property tests of the face-fix geometry: crop boxes, float Lanczos resizing, paste-back."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from continuity.fix import geometry as g
from continuity.errors import ContinuityError

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL = 1.0 / 255.0


def smooth_image(h, w, spacing, seed, lo=0.25, hi=0.75, channels=3):
    """Random smooth content: a coarse random grid, bicubically enlarged (features ~``spacing`` px)."""
    rng = np.random.default_rng(seed)
    gh, gw = max(2, math.ceil(h / spacing) + 1), max(2, math.ceil(w / spacing) + 1)
    import cv2
    margin = (hi - lo) * 0.1          # room for the bicubic overshoot, so the clip below rarely bites
    grid = rng.uniform(lo + margin, hi - margin, (gh, gw, channels)).astype(np.float32)
    big = cv2.resize(grid, (max(w, int(gw * spacing)), max(h, int(gh * spacing))), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)[:h, :w]
    return np.clip(big, lo, hi).astype(np.float32)


@st.composite
def frame_and_mask(draw, max_side=4096, batch=(1, 3)):
    h = draw(st.integers(16, max_side))
    w = draw(st.integers(16, max_side))
    b = draw(st.integers(*batch))
    masks = np.zeros((b, h, w), np.float32)
    boxes = []
    for i in range(b):
        kind = draw(st.sampled_from(["inside", "left", "right", "top", "bottom", "corner", "full", "empty"]))
        mw = draw(st.integers(1, max(1, w // 3)))
        mh = draw(st.integers(1, max(1, h // 3)))
        x0 = draw(st.integers(0, w - mw))
        y0 = draw(st.integers(0, h - mh))
        if kind == "left":
            x0 = 0
        elif kind == "right":
            x0 = w - mw
        elif kind == "top":
            y0 = 0
        elif kind == "bottom":
            y0 = h - mh
        elif kind == "corner":
            x0 = draw(st.sampled_from([0, w - mw]))
            y0 = draw(st.sampled_from([0, h - mh]))
        if kind == "full":
            masks[i] = 1.0
            boxes.append((0, 0, w, h))
        elif kind != "empty":
            masks[i, y0:y0 + mh, x0:x0 + mw] = 1.0
            boxes.append((x0, y0, x0 + mw, y0 + mh))
        else:
            boxes.append(None)
    return h, w, masks, boxes


@settings(max_examples=25, **SETTINGS)
@given(data=frame_and_mask(), context=st.floats(1.0, 3.0), target=st.sampled_from([64, 128, 256, 1024]),
       pad=st.sampled_from(["edge", "reflect"]), seed=st.integers(0, 2**16))
def test_crop_then_paste_of_unchanged_crop_reproduces_the_input(data, context, target, pad, seed):
    h, w, masks, _ = data
    b = masks.shape[0]
    img = np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32)     # any content at all
    crops, cmasks, rec = g.crop_for_inpaint(img, masks, context=context, min_size=16, target=target, pad_mode=pad)
    assert crops.shape == (b, target, target, 3) and crops.dtype == np.float32
    assert cmasks.shape == (b, target, target)
    out = g.paste_back(rec, crops.copy())
    assert out.shape == img.shape
    assert float(np.abs(out - img).max()) <= TOL                                 # in fact: bit-exact
    assert np.array_equal(out, img)


@settings(max_examples=20, **SETTINGS)
@given(data=frame_and_mask(max_side=1500), context=st.floats(1.0, 3.0), target=st.sampled_from([64, 256, 1024]),
       pad=st.sampled_from(["edge", "reflect"]), seed=st.integers(0, 2**16))
def test_resizing_an_unchanged_crop_back_is_accurate(data, context, target, pad, seed):
    """The absolute path (crops resized back as they are): exact for enlarged crops (up to the clamp
    of the Lanczos overshoot, avoided here by keeping values in [0.25, 0.75]); for shrunk crops,
    accurate for content smooth at the crop's scale (finer detail cannot survive a shrink)."""
    h, w, masks, _ = data
    b = masks.shape[0]
    sides = [g.square_box(g.mask_bbox(masks[i]), h, w, context=context, min_size=16, target=target).side
             for i in range(b)]
    shrink = max(sides) / target
    if shrink <= 1:
        img = np.random.default_rng(seed).uniform(0.25, 0.75, (b, h, w, 3)).astype(np.float32)
    else:
        img = np.stack([smooth_image(h, w, 48 * shrink, seed + i) for i in range(b)])
    crops, _, rec = g.crop_for_inpaint(img, masks, context=context, min_size=16, target=target, pad_mode=pad)
    for i, box in enumerate(rec.boxes):
        rx0, ry0, rx1, ry1 = box.region
        back = g.uncrop(crops[i], box)
        tol = 1e-4 if box.side <= target else 2 * TOL
        assert float(np.abs(back - img[i, ry0:ry1, rx0:rx1]).max()) <= tol


@settings(max_examples=25, **SETTINGS)
@given(data=frame_and_mask(max_side=600), context=st.floats(1.0, 3.0), pad=st.sampled_from(["edge", "reflect"]),
       seed=st.integers(0, 2**16), feather=st.sampled_from([0.0, 4.5, 20.0]))
def test_outside_the_mask_is_bit_exact_after_a_full_replacement(data, context, pad, seed, feather):
    h, w, masks, _ = data
    b = masks.shape[0]
    rng = np.random.default_rng(seed)
    img = rng.random((b, h, w, 3)).astype(np.float32)
    crops, cmasks, rec = g.crop_for_inpaint(img, masks, context=context, min_size=16, target=128, pad_mode=pad)
    new = rng.random(crops.shape).astype(np.float32)          # anything at all came back
    out = g.paste_back(rec, new, feather_percent=feather, colour_match=bool(seed % 2))
    outside = masks == 0
    assert np.array_equal(out[outside], img[outside])
    for i in range(b):
        if not masks[i].any():
            assert np.array_equal(out[i], img[i]), "an empty mask passes the image through unchanged"


@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), data=st.data(), context=st.floats(1.0, 3.0),
       min_size=st.integers(1, 512))
def test_boxes_are_square_centred_and_never_shifted(h, w, data, context, min_size):
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y1 = data.draw(st.integers(y0 + 1, h))
    box = g.square_box((x0, y0, x1, y1), h, w, context=context, min_size=min_size, target=64)
    longest = max(x1 - x0, y1 - y0)
    assert box.side >= min_size and box.side >= longest * context - 1e-6
    assert box.side <= max(min_size, math.ceil(longest * context)) + 1
    # centred on the mask box (to half a pixel), whatever the border
    assert abs((box.x0 + box.side / 2) - (x0 + x1) / 2) <= 0.5
    assert abs((box.y0 + box.side / 2) - (y0 + y1) / 2) <= 0.5
    # contains the mask box
    assert box.x0 <= x0 and box.y0 <= y0 and box.x0 + box.side >= x1 and box.y0 + box.side >= y1
    left, top, right, bottom = box.padding
    rx0, ry0, rx1, ry1 = box.region
    assert rx1 - rx0 + left + right == box.side and ry1 - ry0 + top + bottom == box.side


def _pil_resize(x, h, w):
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), "F").resize((w, h), Image.LANCZOS))
                     for c in range(x.shape[-1])], -1)


@pytest.mark.parametrize("src,dst", [((37, 53), (64, 64)), ((300, 200), (64, 96)), ((16, 16), (1024, 1024)),
                                     ((1024, 1024), (333, 450))])
def test_resize_is_float_lanczos3_like_pil(src, dst):
    rng = np.random.default_rng(1)
    x = rng.random(src + (3,)).astype(np.float32)
    ours = g.resize(x, *dst, clamp=False)
    ref = _pil_resize(x, *dst)
    assert float(np.abs(ours - ref).max()) < 2e-5
    # not rounded to 8 bits
    assert np.abs(ours * 255 - np.round(ours * 255)).max() > 0.1


@pytest.mark.parametrize("pad", ["edge", "reflect"])
def test_padding_is_folded_in_exactly(pad):
    rng = np.random.default_rng(2)
    img = rng.random((50, 70, 3)).astype(np.float32)
    box = g.CropBox(x0=-30, y0=20, side=60, target=128, height=50, width=70, pad_mode=pad)
    padded = np.pad(img, ((0, 30), (30, 0), (0, 0)), mode=pad)       # rows 20..80 need 30 below, cols -30..30
    ref = g.resize(padded[20:80, 0:60], 128, 128, clamp=False)
    ours = g.crop_resized(img, box, clamp=False)
    assert float(np.abs(ours - ref).max()) < 1e-5
    assert box.padding == (30, 0, 0, 30) and box.region == (0, 20, 30, 50)


def test_mask_resize_is_smooth_and_bounded():
    m = np.zeros((40, 40), np.float32)
    m[10:30, 12:28] = 1
    box = g.square_box(g.mask_bbox(m), 40, 40, context=1.5, min_size=8, target=256)
    cm = g.crop_resized(m, box, "triangle")
    assert cm.min() >= 0 and cm.max() <= 1
    assert ((cm > 0.05) & (cm < 0.95)).any(), "soft edge"
    assert cm[128, 128] == pytest.approx(1.0)


def test_exact_inverse_of_the_upscale_for_any_content():
    rng = np.random.default_rng(3)
    img = rng.random((90, 120, 3)).astype(np.float32)
    for side, target in [(45, 1024), (64, 64), (31, 256)]:
        box = g.CropBox(x0=-5, y0=60, side=side, target=target, height=90, width=120)
        up = g.crop_resized(img, box, clamp=False)
        back = g.uncrop(up, box, clamp=False)
        rx0, ry0, rx1, ry1 = box.region
        assert float(np.abs(back - img[ry0:ry1, rx0:rx1]).max()) < 1e-4


def test_feather_is_scale_aware_and_inside_the_mask():
    widths = [g.feather_width(s, 4.5) for s in (20, 200, 800, 5000)]
    assert widths == [1, 9, 36, 64]
    assert g.feather_width(300, 0) == 0
    m = np.zeros((200, 200), np.float32)
    m[50:150, 50:150] = 1
    box = g.square_box(g.mask_bbox(m), 200, 200, context=2.0, min_size=8, target=256)
    assert box.side == 200
    a = g.blend_alpha(m, box, 9)
    assert np.all(a[m == 0] == 0)
    assert a[100, 100] == 1.0
    assert 0 < a[50, 100] < 0.2 and a[60, 100] == 1.0          # ramps over ~9 px inside the edge
    # at the image border there is nothing to blend with: no ramp there
    m2 = np.zeros((100, 100), np.float32)
    m2[:, 60:] = 1
    box2 = g.square_box(g.mask_bbox(m2), 100, 100, context=1.0, min_size=8, target=64)
    a2 = g.blend_alpha(m2[box2.region[1]:box2.region[3], box2.region[0]:box2.region[2]], box2, 5)
    assert a2[:, -1].min() == 1.0


def test_colour_match_removes_a_uniform_shift():
    img = smooth_image(96, 96, 12, 0)
    m = np.zeros((96, 96), np.float32)
    m[30:70, 30:70] = 1
    crops, _, rec = g.crop_for_inpaint(img, m, context=1.5, min_size=8, target=128)
    shifted = np.clip(crops + np.array([0.1, -0.05, 0.02], np.float32), 0, 1)
    plain = g.paste_back(rec, shifted)[0]
    matched = g.paste_back(rec, shifted, colour_match=True)[0]
    inside = m > 0
    assert np.abs(plain[inside] - img[inside]).mean() > 0.04
    assert np.abs(matched[inside] - img[inside]).mean() < 0.005


def test_batches_get_their_own_crops_and_errors_name_inputs():
    img = np.zeros((2, 64, 80, 3), np.float32)
    m = np.zeros((2, 64, 80), np.float32)
    m[0, 0:10, 0:10] = 1
    m[1, 40:64, 50:80] = 1
    crops, cmasks, rec = g.crop_for_inpaint(img, m, context=1.5, min_size=8, target=64)
    assert rec.boxes[0] != rec.boxes[1] and crops.shape == (2, 64, 64, 3)
    with pytest.raises(ContinuityError) as e:
        g.crop_for_inpaint(img, np.zeros((3, 64, 80), np.float32))
    assert e.value.input == "mask"
    with pytest.raises(ContinuityError) as e:
        g.crop_for_inpaint(img, np.zeros((2, 64, 64), np.float32))
    assert e.value.input == "mask" and "64x64" in e.value.message
    with pytest.raises(ContinuityError) as e:
        g.paste_back(rec, crops[:1])
    assert e.value.input == "image"
    # one mask for a batch is used for every image
    _, _, rec1 = g.crop_for_inpaint(img, m[:1], context=1.5, min_size=8, target=64)
    assert rec1.boxes[0] == rec1.boxes[1]


def test_rgba_and_grey_images_keep_their_channels():
    rng = np.random.default_rng(4)
    for c in (1, 4):
        img = rng.uniform(0.3, 0.7, (1, 40, 40, c)).astype(np.float32)
        m = np.zeros((1, 40, 40), np.float32)
        m[:, 10:20, 10:20] = 1
        crops, _, rec = g.crop_for_inpaint(img, m, min_size=8, target=64)
        assert crops.shape == (1, 64, 64, c)
        out = g.paste_back(rec, crops)
        assert out.shape == img.shape and float(np.abs(out - img).max()) <= TOL


def test_rgb_crops_paste_into_rgba_frames_keeping_alpha():
    rng = np.random.default_rng(5)
    img = rng.uniform(0.3, 0.7, (1, 48, 48, 4)).astype(np.float32)
    m = np.zeros((1, 48, 48), np.float32)
    m[:, 10:30, 10:30] = 1
    crops, _, rec = g.crop_for_inpaint(img, m, min_size=8, target=64)
    out = g.paste_back(rec, np.zeros_like(crops[..., :3]), feather_percent=0)
    assert np.array_equal(out[..., 3], img[..., 3])
    assert float(np.abs(out[0, 10:30, 10:30, :3]).max()) < 1e-5
