"""Dataset stage core: sheet cutting, square crops, captions, versions, audit (no ComfyUI)."""
import functools
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from continuity.dataset import audit as au
from continuity.dataset import captions as cp
from continuity.dataset import sheet as sh
from continuity.dataset import square as sq
from continuity.dataset import versions as vs
from continuity.errors import ContinuityError

IDS = [1, 3, 8, 13, 16, 18, 20, 22]


@functools.cache
def _face_center(path):
    from continuity import faces
    det = faces.get_detector("mediapipe" if faces.mediapipe_available() else "dlib")
    return det.detect(np.asarray(Image.open(path).convert("RGB")))[0].center


def _photo(faces_dir, n, w, h):
    """The photo cut to aspect w:h around its face, resized to w x h."""
    path = faces_dir / f"img{n}.jpg"
    im = Image.open(path).convert("RGB")
    cx, cy = _face_center(str(path))
    W, H = im.size
    a = w / h
    if a < W / H:
        nw = int(H * a)
        x0 = int(min(max(cx - nw / 2, 0), W - nw))
        im = im.crop((x0, 0, x0 + nw, H))
    else:
        nh = int(W / a)
        y0 = int(min(max(cy - nh / 2, 0), H - nh))
        im = im.crop((0, y0, W, y0 + nh))
    return np.asarray(im.resize((w, h), Image.LANCZOS))


def _sheet(faces_dir, cells, W, H, color=(255, 255, 255)):
    """cells: list of (x, y, w, h, image id)."""
    s = np.empty((H, W, 3), np.uint8)
    s[:] = color
    for x, y, w, h, n in cells:
        s[y:y + h, x:x + w] = _photo(faces_dir, n, w, h)
    return s, [(x, y, x + w, y + h) for x, y, w, h, _ in cells]


def _grid(faces_dir, rows, cols, cw, ch, g, color=(255, 255, 255)):
    cells = []
    for r in range(rows):
        for c in range(cols):
            cells.append((g + c * (cw + g), g + r * (ch + g), cw, ch, IDS[(r * cols + c) % len(IDS)]))
    return _sheet(faces_dir, cells, cols * cw + (cols + 1) * g, rows * ch + (rows + 1) * g, color)


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector():
    from continuity import faces
    return faces.get_detector("mediapipe" if faces.mediapipe_available() else "dlib")


def _check_panels(sheet, truth, panels, detector):
    # every true panel found exactly once (IoU >= 0.85), nothing else found
    assert len(panels) == len(truth), [p.box for p in panels]
    for t in truth:
        hits = [p for p in panels if _iou(p.box, t) >= 0.85]
        assert len(hits) == 1, (t, [p.box for p in panels])
    # each found panel, cut square around its character, holds one face
    for p in panels:
        box = sq.square_panel_box(p.box, p.faces[0].box if p.faces else None)
        assert box[2] - box[0] == box[3] - box[1] == min(p.width, p.height)
        crop = sheet[box[1]:box[3], box[0]:box[2]]
        assert len(detector.detect(crop)) == 1


@pytest.mark.parametrize("rows,cols", [(2, 3), (2, 4)])
@pytest.mark.parametrize("gutter", [0, 4, 16, 40])
def test_grid_sheets_every_panel_once_with_its_face(faces_dir, detector, rows, cols, gutter):
    sheet, truth = _grid(faces_dir, rows, cols, 180, 240, gutter, color=(255, 255, 255) if gutter % 8 else (20, 20, 24))
    faces = detector.detect(sheet)
    panels = sh.find_panels(sheet, faces)
    _check_panels(sheet, truth, panels, detector)
    assert all(p.how == ("seam" if gutter == 0 else "gutter") for p in panels if p.how != "face")


def test_uneven_layouts(faces_dir, detector):
    # a tall panel beside two stacked ones, and a row of three over a row of two wider ones
    cells = [(10, 10, 300, 420, 1), (320, 10, 220, 205, 3), (320, 225, 220, 205, 8)]
    sheet, truth = _sheet(faces_dir, cells, 550, 440)
    _check_panels(sheet, truth, sh.find_panels(sheet, detector.detect(sheet)), detector)
    cells = [(0, 0, 200, 260, 13), (200, 0, 200, 260, 16), (400, 0, 200, 260, 18),
             (0, 260, 300, 280, 20), (300, 260, 300, 280, 22)]   # no gutters at all
    sheet, truth = _sheet(faces_dir, cells, 600, 540)
    _check_panels(sheet, truth, sh.find_panels(sheet, detector.detect(sheet)), detector)


def test_faces_split_a_sheet_without_borders(faces_dir, detector):
    # the same photo three times on one continuous background: no gutter, no seam
    face = _photo(faces_dir, 20, 160, 200)
    sheet = np.full((240, 600, 3), 128, np.uint8)
    for k in range(3):
        sheet[20:220, 20 + k * 200:180 + k * 200] = face
    blurred = np.asarray(Image.fromarray(sheet).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(6)))
    faces = detector.detect(blurred)
    assert len(faces) == 3
    panels = sh.find_panels(blurred, faces, method="faces")
    assert len(panels) == 3 and all(len(p.faces) == 1 for p in panels)
    xs = sorted(p.faces[0].center[0] for p in panels)
    assert xs[0] < 200 < xs[1] < 400 < xs[2]


def test_square_plan_keeps_face_and_warns_on_upscale():
    # portrait 600x1000, face near the top: the square keeps the face with head room
    plan = sq.plan_square(600, 1000, face_box=(250, 150, 350, 260), target=1024, max_upscale=1.5)
    x0, y0, x1, y1 = plan.box
    assert (x1 - x0, y1 - y0) == (600, 600) and y0 <= 150 - 30 and y1 >= 260
    assert plan.upscale == pytest.approx(1024 / 600) and "upscaled" in plan.warning
    # landscape, face at the right: the square moves right
    plan = sq.plan_square(1600, 900, face_box=(1300, 300, 1450, 450), target=900)
    assert plan.box[0] <= 1300 and plan.box[2] >= 1450 and plan.box[2] <= 1600 and not plan.warning
    # person mask: a standing person fits whole when it can
    mask = np.zeros((1000, 500), np.float32)
    mask[300:750, 200:300] = 1
    plan = sq.plan_square(500, 1000, face_box=(220, 300, 280, 360), person_mask=mask, target=512)
    assert plan.box[1] <= 300 and plan.box[3] >= 750
    # pad mode: the whole image
    plan = sq.plan_square(400, 300, target=256, mode="pad")
    rgb, _ = sq.apply_square(np.ones((300, 400, 3), np.float32), plan)
    assert rgb.shape == (256, 256, 3) and rgb[0, 128].max() < 0.05 and rgb[128, 128].min() > 0.95


def test_captions_compose_parse_and_regularization(tmp_path):
    c = cp.Caption(trigger="ohwx", class_word="man", appearance=["short brown hair", "green eyes"],
                   framing="close-up portrait", background="studio background")
    text = c.compose()
    assert text == "photo of ohwx man, short brown hair, green eyes, close-up portrait, studio background"
    assert c.regularization() == "photo of a man, close-up portrait, studio background"
    assert c.compose({"trigger", "class", "framing"}) == "photo of ohwx man, close-up portrait"
    back = cp.parse(text, trigger="ohwx", class_word="man")
    assert back.appearance == ["short brown hair", "green eyes"]
    assert back.framing == "close-up portrait" and back.background == "studio background"
    assert back.compose() == text
    assert cp.Caption(class_word="woman", trigger="zkw").regularization() == "photo of a woman"
    assert cp.class_phrase("elderly man") == "an elderly man"
    img = tmp_path / "a.png"
    cp.write_caption(str(img), text)
    assert (tmp_path / "a.txt").read_text().strip() == text


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_versions_save_load_merge_never_overwrite(tmp_path):
    rng = np.random.default_rng(1)
    items = [vs.Item(filename=f"sub/img{i}.jpg", rgb=rng.random((32, 32, 3)).astype(np.float32), caption=f"cap {i}",
                     mask=(np.arange(32 * 32).reshape(32, 32) % 2).astype(np.float32) if i == 0 else None,
                     scores={"identity": 0.9 + i / 100})
             for i in range(3)]
    v1 = vs.save_version(str(tmp_path), "hero", items, note="first")
    assert v1.number == 1 and os.path.basename(v1.path) == "v1"
    man = json.loads(open(os.path.join(v1.path, "manifest.json")).read())
    assert man["version"] == 1 and man["count"] == 3 and man["items"][0]["mask_file"] == "masks/img0.png"
    assert man["items"][1]["source"] == "sub/img1.jpg" and man["items"][1]["scores"]["identity"] == pytest.approx(0.91)
    assert open(os.path.join(v1.path, "img2.txt")).read().strip() == "cap 2"
    before = {f: _sha(os.path.join(v1.path, f)) for f in sorted(os.listdir(v1.path)) if f != "masks"}
    fixed = rng.random((32, 32, 3)).astype(np.float32)
    v2 = vs.merge_fixed(str(tmp_path), vs.load_version(str(tmp_path), "hero", 1),
                        [vs.Fix(target="img1.png", rgb=fixed, caption="cap 1 fixed", scores={"identity": 0.99}),
                         vs.Fix(target="new_one", rgb=fixed)])
    assert v2.number == 2 and v2.manifest["parent"] == "v1" and v2.provenance["replaced"] == ["img1.png"]
    assert v2.provenance["step"] == "merge" and v2.provenance["merged_from"] == "hero/v1"
    recs = {r["file"]: r for r in v2.items}
    assert recs["img1.png"]["fixed_from"] == "hero/v1/img1.png" and recs["img1.png"]["caption"] == "cap 1 fixed"
    assert recs["img0.png"]["mask_file"] == "masks/img0.png" and "new_one.png" in recs
    assert recs["img0.png"]["sha256"] == before["img0.png"]
    assert recs["img1.png"]["sha256"] != before["img1.png"]
    # v1 untouched
    assert {f: _sha(os.path.join(v1.path, f)) for f in sorted(os.listdir(v1.path)) if f != "masks"} == before
    assert vs.load_version(str(tmp_path), "hero").number == 2
    with pytest.raises(ContinuityError, match="no v7"):
        vs.load_version(str(tmp_path), "hero", 7)
    with pytest.raises(ContinuityError):
        vs.save_version(str(tmp_path), "../escape", items)
    # no partial folders left behind
    assert sorted(os.listdir(tmp_path / "hero")) == ["v1", "v2"]


def test_framing_classes_on_crops_at_known_scales(faces_dir, detector):
    # crop a real portrait so that the frame ends k face-heights below the face top
    checked = 0
    for n in (1, 3, 7, 9, 13, 23):
        img = np.asarray(Image.open(faces_dir / f"img{n}.jpg").convert("RGB"))
        f = detector.detect(img)[0]
        x0, y0, x1, y1 = f.box
        fh = y1 - y0
        for k, expected in ((1.5, "close-up"), (2.4, "close-up portrait"), (4.0, "portrait")):
            bottom = int(round(y0 + k * fh))
            if bottom > img.shape[0]:
                continue
            crop = img[:bottom]
            res = au.audit([crop], detector=detector, options=au.AuditOptions(use_person_mask=False, min_count=1))
            row = res.images[0]
            assert row.framing == expected, (n, k, row.extent)
            assert row.scale == au.SCALES[expected]
            checked += 1
    assert checked >= 5
    # a person ending inside the frame (mask) reads as full body / 3/4 by its extent
    assert au.visible_extent((100, 100, 140, 150), 2000, None) > 8
    mask = np.zeros((2000, 400), np.float32)
    mask[100:420] = 1
    assert au.framing_class(au.visible_extent((100, 100, 140, 150), 2000, mask)) == "3/4 shot"
    assert au.framing_class(9.0) == "full body"


def test_pose_classes_mirror(faces_dir, detector):
    assert au.pose_class(30, 0) == "right" and au.pose_class(-30, 0) == "left"
    assert au.pose_class(0, 30) == "up" and au.pose_class(0, -30) == "down" and au.pose_class(5, 5) == "frontal"
    imgs, names = [], []
    # the photos turn only slightly (about 8-15 degrees): a low threshold tells left from right
    for n in (16, 4, 11):
        img = np.asarray(Image.open(faces_dir / f"img{n}.jpg").convert("RGB"))
        imgs += [img, img[:, ::-1].copy()]
        names += [f"img{n}", f"img{n}-mirror"]
    res = au.audit(imgs, names, detector=detector, options=au.AuditOptions(use_person_mask=False, yaw_threshold=5.0))
    for a, b in zip(res.images[::2], res.images[1::2]):
        assert a.yaw is not None and b.yaw is not None
        assert np.sign(a.yaw) == -np.sign(b.yaw)
        assert abs(a.yaw + b.yaw) < 6.0
        swap = {"left": "right", "right": "left"}
        assert a.pose in swap and b.pose == swap[a.pose], (a.name, a.yaw, b.yaw)
    assert {r.pose for r in res.images} >= {"left", "right"}


def test_audit_duplicates_outliers_and_reports(faces_dir, detector):
    from continuity.faces import embedders
    emb = embedders.get_embedder("dlib")
    same = [1, 2, 4, 5, 6, 7, 10, 11]       # one person (assets/faces/README.md)
    imgs = [np.asarray(Image.open(faces_dir / f"img{n}.jpg").convert("RGB")) for n in same]
    imgs.append(np.asarray(Image.open(faces_dir / "img18.jpg").convert("RGB")))   # someone else
    imgs.append(imgs[0][:, :].copy())                                             # exact duplicate
    names = [f"img{n}" for n in same] + ["img18", "img1-copy"]
    res = au.audit(imgs, names, detector=detector, embedder=emb)
    rows = {r.name: r for r in res.images}
    assert rows["img18"].identity_outlier
    assert sum(r.identity_outlier for r in res.images) <= 2
    assert "img1-copy" in rows["img1"].duplicate_of and "img1" in rows["img1-copy"].duplicate_of
    assert res.summary["count"] == 10 and not res.summary["count_ok"]
    assert any("not square" in m for m in res.missing)
    text = au.table_text(res)
    assert "img18" in text and "identity outlier" in text
    cov = au.coverage_image(res)
    cs = au.contact_sheet(imgs, res)
    assert cov.ndim == 3 and cs.shape[2] == 3 and cs.shape[0] > 100
    json.dumps(res.as_dict())
