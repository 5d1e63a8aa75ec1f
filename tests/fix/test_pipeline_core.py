"""The face-fix pipeline in the core (continuity.fix): per-face masks, crops, the injected inpaint,
paste back, and the identity guard with its one keep rule. No ComfyUI, no models: a box parser,
an inpaint that paints a known value, an embedder that reads the face's brightness."""
from __future__ import annotations

import numpy as np
import pytest

from continuity.faces.base import Face
from continuity.fix import FixSettings, IdentityGuard, fix_faces, fix_image, geometry, keep_fix
from continuity.scoring.cache import EmbeddingCache
from continuity.scoring.similarity import identity_similarity

H, W = 64, 96
LEFT = Face(box=(8.0, 8.0, 40.0, 40.0), score=0.9)
RIGHT = Face(box=(56.0, 12.0, 80.0, 36.0), score=0.8)


class BoxParser:
    """Every region of a face is its box (0/1 uint8), so masks are known exactly."""
    regions = ("skin", "brows", "eyes", "nose", "mouth", "ears", "hair", "beard")
    name = "box"

    def parse(self, rgb, face, faces=None, want=None, person=None):
        m = np.zeros(rgb.shape[:2], np.uint8)
        x0, y0, x1, y1 = (int(v) for v in face.box)
        m[y0:y1, x0:x1] = 1
        return {"skin": m}


class BrightnessEmbedder:
    """Embedding (b, 1 - b) / norm of the mean brightness b in the face box: brighter faces point one way."""
    name = "bright"
    dim = 2
    threshold = 0.5

    def embed(self, rgb, faces):
        out = []
        for f in faces:
            x0, y0, x1, y1 = (int(v) for v in f.box)
            b = float(np.asarray(rgb[y0:y1, x0:x1], np.float32).mean() / 255.0)
            v = np.array([b, 1.0 - b + 1e-3], np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


class Identity:
    """References that say: the brighter, the more like the character."""
    references = np.array([[1.0, 0.0]], np.float32)

    def similarity(self, emb):
        return identity_similarity(emb, self.references)


def _painter(value: float, calls: list):
    def inpaint(crops, masks, k, image_index):
        calls.append((k, image_index, crops.shape, masks.shape))
        return np.full_like(crops, value)
    return inpaint


def _guard(faces, enforce=True):
    return IdentityGuard(Identity(), BrightnessEmbedder(), lambda rgb: list(faces), enforce=enforce,
                         setting="keep_only_if_better", cache=EmbeddingCache())


SETTINGS = FixSettings(regions="face", grow=0.0, crop_min_size=16, target_size=64, feather=0.0)


def test_the_keep_rule():
    assert keep_fix(0.5, 0.5) and keep_fix(0.5, 0.6) and keep_fix(None, 0.1)
    assert not keep_fix(0.5, 0.49) and not keep_fix(0.5, None) and not keep_fix(None, None)


def test_pipeline_equals_crop_inpaint_paste_with_the_same_settings():
    """fix_image = the per-face mask -> crop_for_inpaint -> inpaint -> paste_back (the node chain)."""
    rng = np.random.default_rng(0)
    img = rng.random((H, W, 3)).astype(np.float32)
    calls: list = []
    out, mask, reports, n = fix_image(img, [LEFT, RIGHT], [LEFT], parser=BoxParser(),
                                      inpaint=_painter(0.25, calls), settings=SETTINGS)
    m = np.zeros((H, W), np.float32)
    m[8:40, 8:40] = 1
    crops, cmask, rec = geometry.crop_for_inpaint(img[None], m[None], context=1.5, min_size=16, target=64)
    want = geometry.paste_back(rec, np.full_like(crops[..., :3], 0.25), feather_percent=0.0)[0]
    assert np.array_equal(out, want) and np.array_equal(mask, m)
    assert n == 1 and reports[0].fixed and reports[0].face == 0 and not reports[0].guarded
    assert calls == [(0, 0, (1, 64, 64, 3), (1, 64, 64))]
    assert np.array_equal(out[:, 48:], img[:, 48:])                 # the other face is untouched


def test_faces_are_numbered_across_the_batch_and_faceless_images_pass_through():
    rng = np.random.default_rng(1)
    imgs = [rng.random((H, W, 3)).astype(np.float32) for _ in range(3)]
    found = {0: [LEFT, RIGHT], 1: [], 2: [RIGHT]}
    calls: list = []
    res = fix_faces(imgs, detect=lambda rgb, i: found[i], choose=lambda rgb, faces, i: faces, parser=BoxParser(),
                    inpaint=_painter(0.5, calls), settings=SETTINGS)
    assert [(k, i) for k, i, _, _ in calls] == [(0, 0), (1, 0), (2, 2)]
    assert res.count == 3 and res.faces_found == [2, 0, 1]
    assert np.array_equal(res.images[1], imgs[1]) and float(res.masks[1].max()) == 0.0
    assert [r.face for r in res.faces] == [0, 1, 0]                # largest first, never re-sorted by the fix


def test_guard_keeps_a_fix_that_does_not_lower_the_identity():
    img = np.full((H, W, 3), 0.3, np.float32)
    out, mask, reports, _ = fix_image(img, [LEFT], [LEFT], parser=BoxParser(), inpaint=_painter(0.9, []),
                                      settings=SETTINGS, guard=_guard([LEFT]))
    rep = reports[0]
    assert rep.fixed and rep.guarded and rep.after > rep.before and float(mask.max()) == 1.0
    assert float(out[20, 20, 0]) == pytest.approx(0.9, abs=1e-5)
    assert rep.line() == f"image 0: similarity {rep.before:.3f} before the fix, {rep.after:.3f} after"


def test_guard_takes_back_a_fix_that_lowers_the_identity_or_loses_the_face():
    img = np.full((H, W, 3), 0.6, np.float32)
    for faces_after, after in (([LEFT], "0."), ([], "face not found again")):
        guard = _guard([LEFT])
        guard.detect = lambda rgb, f=faces_after: list(f)
        out, mask, reports, n = fix_image(img, [LEFT], [LEFT], parser=BoxParser(), inpaint=_painter(0.1, []),
                                          settings=SETTINGS, guard=guard)
        rep = reports[0]
        assert not rep.fixed and n == 1                               # it was inpainted, then undone
        assert np.array_equal(out, img) and float(mask.max()) == 0.0
        assert after in rep.line() and rep.line().endswith(": original kept (keep_only_if_better)")
    # off: the fix stays, and the report says it scored lower
    out, mask, reports, _ = fix_image(img, [LEFT], [LEFT], parser=BoxParser(), inpaint=_painter(0.1, []),
                                      settings=SETTINGS, guard=_guard([LEFT], enforce=False))
    assert reports[0].fixed and not np.array_equal(out, img)
    assert reports[0].line().endswith("after (lower, kept: keep_only_if_better is off)")


def test_guard_scores_the_face_at_the_fixed_place_not_another():
    """A brighter face elsewhere must not count as the fixed face's score."""
    img = np.full((H, W, 3), 0.6, np.float32)
    img[12:36, 56:80] = 1.0                                           # the other face: very bright
    out, _, reports, _ = fix_image(img, [LEFT, RIGHT], [LEFT], parser=BoxParser(), inpaint=_painter(0.2, []),
                                   settings=SETTINGS, guard=_guard([LEFT, RIGHT]))
    assert not reports[0].fixed and reports[0].after < reports[0].before
    assert np.array_equal(out, img)


def test_known_scores_are_not_worked_out_again_and_empty_masks_are_reported():
    img = np.full((H, W, 3), 0.3, np.float32)
    _, _, reports, _ = fix_image(img, [LEFT], [LEFT], parser=BoxParser(), inpaint=_painter(0.9, []),
                                 settings=SETTINGS, guard=_guard([LEFT]), before={id(LEFT): 0.123})
    assert reports[0].before == 0.123

    class EmptyParser(BoxParser):
        def parse(self, rgb, face, faces=None, want=None, person=None):
            return {"skin": np.zeros(rgb.shape[:2], np.uint8)}

    calls: list = []
    out, mask, reports, n = fix_image(img, [LEFT], [LEFT], parser=EmptyParser(), inpaint=_painter(0.9, calls),
                                      settings=SETTINGS, guard=_guard([LEFT]), before={id(LEFT): 0.5})
    assert n == 0 and not calls and np.array_equal(out, img)
    assert reports[0].line() == "image 0: similarity 0.500; not fixed (the face's region mask was empty)"


def test_alpha_channels_stay_as_they_were():
    rng = np.random.default_rng(2)
    img = rng.random((H, W, 4)).astype(np.float32)
    out, _, _, _ = fix_image(img, [LEFT], [LEFT], parser=BoxParser(), inpaint=_painter(0.5, []), settings=SETTINGS)
    assert np.array_equal(out[..., 3], img[..., 3]) and not np.array_equal(out[..., :3], img[..., :3])


def test_bad_regions_fail_before_any_work():
    from continuity.errors import ContinuityError
    with pytest.raises(ContinuityError) as exc:
        fix_faces([np.zeros((8, 8, 3), np.float32)], detect=lambda rgb, i: pytest.fail("detected"),
                  choose=lambda rgb, f, i: f, parser=BoxParser(), inpaint=_painter(0, []),
                  settings=FixSettings(regions="face, tail"))
    assert exc.value.input == "regions"
