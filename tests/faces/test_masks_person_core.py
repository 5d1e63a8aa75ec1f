"""Masks that stay on their person: hair, ears, beard and neck of the chosen face never reach
another person in group photos built from the real portraits (people side by side, touching,
at different heights), for the built-in parser on both detectors and for any parser's output
(a parser that calls everything hair is cut back to the head)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from continuity.faces import get_detector, load_analyzer, mediapipe_available
from continuity.faces.draw import overlay
from continuity.faces.masks import head_bound, limit_to_head, region_masks
from support.synthetic import group_photo, load

needs_mp = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")
GROUPS = {
    "four": (["img1", "img3", "img13", "img16"], [360, 300, 400, 330]),
    "stagger": (["img18", "img24", "img22", "img8"], [320, 380, 300, 360]),
    "tall_short": (["img16", "img3", "img13"], [420, 280, 400]),
}
SEAM = 0.1           # a mask may reach this share of its face width into a neighbour's column (edge blur), never more


@pytest.fixture(scope="module")
def groups(faces_dir):
    det = get_detector("dlib")
    out = {}
    for key, (names, heights) in GROUPS.items():
        boxes = [det.detect(load(faces_dir, n))[0].box for n in names]
        out[key] = group_photo(faces_dir, names, heights, boxes=boxes)
    return out


def _owner(group, face) -> int:
    cx, cy = face.center
    return next(i for i, (x0, y0, x1, y1) in enumerate(group.tiles) if x0 <= cx < x1)


def _spill(group, mask, face, faces) -> tuple[int, int]:
    """(pixels in other people's photos, of them on another person's head or body): the other
    face's column (its box widened by a quarter of its width each side, inside its photo) from
    0.6 face heights above its box down, shrunk by SEAM of this face's width."""
    own = _owner(group, face)
    m = mask > 0.5
    total = far = 0
    margin = int(np.ceil(SEAM * face.width))
    for f in faces:
        i = _owner(group, f)
        if i == own:
            continue
        x0, y0, x1, y1 = group.tiles[i]
        total += int(m[y0:y1, x0:x1].sum())
        fx0, fy0, fx1, fy1 = f.box
        cx0 = max(x0, int(fx0 - 0.25 * f.width)) + margin
        cx1 = min(x1, int(fx1 + 0.25 * f.width)) - margin
        cy0 = max(y0, int(fy0 - 0.6 * f.height)) + margin
        far += int(m[cy0:y1, cx0:cx1].sum())
    return total, far


@needs_mp
@pytest.mark.parametrize("backend", ["mediapipe", "dlib"])
@pytest.mark.parametrize("key", list(GROUPS))
def test_group_masks_stay_on_their_person(groups, key, backend, artifacts_dir):
    g = groups[key]
    an = load_analyzer(backend, parser="mediapipe")
    faces = an.detect(g.image)
    assert len(faces) == len(g.tiles)
    assert sorted(_owner(g, f) for f in faces) == list(range(len(g.tiles)))
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    shown = np.zeros(g.image.shape[:2], np.float32)
    for k, f in enumerate(ordered):
        res = region_masks(g.image, faces, which="index", index=k, parser=an.parser)
        total, far = _spill(g, res.mask, f, faces)
        assert far == 0, f"{key}/{backend}: face {k}'s mask has {far} pixels on another person"
        assert total <= 0.02 * res.mask.sum()
        assert {"hair", "skin"} <= set(res.per_region)
        shown = np.maximum(shown, res.mask * (0.4 + 0.6 * (k % 2)))
    Image.fromarray(overlay(g.image, shown, faces=faces)).save(artifacts_dir / f"masks_group_{key}_{backend}.png")


@pytest.mark.parametrize("key", list(GROUPS))
def test_any_parser_is_cut_back_to_the_head(groups, key):
    """A parser that calls the whole picture hair (as a face parser run on a crop with a neighbour
    in it can): what is left is connected to the face, inside a head-sized bound, off the others."""
    g = groups[key]
    faces = get_detector("dlib").detect(g.image)
    h, w = g.image.shape[:2]
    for f in faces:
        parts = {"skin": np.zeros((h, w), np.uint8), "hair": np.ones((h, w), np.uint8),
                 "ears": np.ones((h, w), np.uint8)}
        x0, y0, x1, y1 = (int(v) for v in f.box)
        parts["skin"][y0:y1, x0:x1] = 1
        out = limit_to_head(parts, f, faces)
        hair = out["hair"]
        assert hair.any() and out["skin"] is parts["skin"]
        total, far = _spill(g, hair, f, faces)
        assert far == 0
        ys, xs = np.nonzero(hair)
        assert xs.max() - xs.min() <= 2.2 * f.width and ys.max() - ys.min() <= 2.8 * f.height
        bound, (bx0, by0, bx1, by1) = head_bound((h, w), f, faces)
        assert not hair[:by0].any() and not hair[by1:].any() and not hair[:, :bx0].any() and not hair[:, bx1:].any()


@needs_mp
def test_couple_mask_leaves_the_jacket(faces_dir, artifacts_dir):
    """On couple.jpg the woman's hair once followed the man's dark jacket under her chin."""
    rgb = np.asarray(Image.open(faces_dir / "couple.jpg").convert("RGB"))
    an = load_analyzer("mediapipe")
    faces = an.detect(rgb)
    woman = min(faces, key=lambda f: f.center[0])
    man = max(faces, key=lambda f: f.center[0])
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    res = region_masks(rgb, faces, which="index", index=ordered.index(woman), parser=an.parser)
    m = res.mask > 0.5
    x0, y0, x1, y1 = (int(v) for v in woman.box)
    # under her chin line and right of her face: the man's jacket and shirt
    assert m[y1:, x1:].sum() < 0.002 * m.sum()
    assert not m[int(man.box[3]):, int(man.box[0]):].any()
    Image.fromarray(overlay(rgb, res.mask, faces=[woman])).save(artifacts_dir / "masks_couple_woman.png")
