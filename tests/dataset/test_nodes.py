"""Dataset nodes through ComfyUI's executor, in-process."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfy


def _copy_faces(faces_dir, folder, ids, caption=True):
    folder.mkdir(parents=True, exist_ok=True)
    for n in ids:
        shutil.copy(faces_dir / f"img{n}.jpg", folder / f"img{n}.jpg")
        if caption:
            (folder / f"img{n}.txt").write_text(f"photo of ohwx person, shot {n}\n")
    return folder


def _tree_hashes(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _load(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def test_cut_sheet_square_audit_graph(comfy, faces_dir):
    # a 2x3 sheet with gutters from real photos, saved as an input image
    cells = []
    # grey gutters (a white gutter beside a white studio backdrop cannot be told apart: see docs)
    sheet = np.full((2 * 240 + 30, 3 * 200 + 40, 3), 128, np.uint8)
    for k, n in enumerate([1, 3, 13, 18, 20, 23]):
        r, c = divmod(k, 3)
        im = Image.open(faces_dir / f"img{n}.jpg").convert("RGB")
        im = im.resize((200, 240), Image.LANCZOS)
        x, y = 10 + c * 210, 10 + r * 250
        sheet[y:y + 240, x:x + 200] = np.asarray(im)
        cells.append((x, y))
    Image.fromarray(sheet).save(comfy.base / "input" / "sheet.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "sheet.png"}},
        "2": {"class_type": "ContinuityCutCompositeSheet",
              "inputs": {"sheet": ["1", 0], "method": "auto", "square": True, "size": 256, "drop_faceless": False}},
        "3": {"class_type": "ContinuityDatasetAudit",
              "inputs": {"images": ["2", 0], "identity_model": "none", "min_side": 256, "min_count": 6,
                         "yaw_threshold": 20.0, "pitch_threshold": 25.0, "use_person_mask": True}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 3]}},
    }
    res = comfy.run(prompt)
    images = res.output("2", 0)
    assert res.value("2", 2) == 6 and len(images) == 6
    assert all(tuple(t.shape) == (1, 256, 256, 3) for t in images)
    panels = json.loads(res.value("2", 1))
    # each cell found once (a white photo background beside the white gutter may trim a few px)
    for x, y in cells:
        hits = [p for p in panels if _iou(p["panel"], (x, y, x + 200, y + 240)) >= 0.8]
        assert len(hits) == 1, (x, y, panels)
    report = json.loads(res.value("3", 1))
    assert report["summary"]["count"] == 6 and report["summary"]["square"] == 6
    assert all(r["faces"] == 1 for r in report["images"])
    assert len(res.output("3", 4)) == 6 and all(f in ("close-up", "close-up portrait", "portrait", "3/4 shot",
                                                          "full body") for f in res.output("3", 4))
    assert "text" in res.ui["3"] and len(res.ui["4"]["images"]) == 1


def test_square_and_resize_warns_and_errors(comfy, faces_dir):
    _copy_faces(faces_dir, comfy.base / "input" / "sq", [5, 12], caption=False)
    prompt = {"1": _load("sq"),
              "2": {"class_type": "ContinuitySquareAndResize",
                    "inputs": {"images": ["1", 0], "size": 512, "mode": "crop", "max_upscale": 1.2,
                               "use_person_mask": True}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    res = comfy.run(prompt)
    outs = res.output("2", 0)
    assert [tuple(t.shape) for t in outs] == [(1, 512, 512, 3)] * 2
    warnings = res.output("2", 2)
    assert all("upscaled" in w for w in warnings)          # img5 is 330 px wide, img12 415 px high
    # a wrong dataset name is refused at validation, naming node and input
    bad = {"1": _load("sq"),
           "2": {"class_type": "ContinuitySaveDatasetVersion",
                 "inputs": {"images": ["1", 0], "name": "../../etc", "note": ""}}}
    ok, err, _, node_errors = comfy.validate(bad)
    assert not ok and "Save Dataset Version (Continuity), input 'name'" in json.dumps(node_errors)


def test_dataset_versioned_and_merged(comfy, faces_dir):
    _copy_faces(faces_dir, comfy.base / "input" / "hero_src", [1, 2, 4])
    save = {"1": _load("hero_src"),
            "2": {"class_type": "ContinuityBuildCaption",
                  "inputs": {"trigger": "ohwx", "class_word": "man", "appearance": "", "framing": "", "background": "",
                             "extra": "", "prefix": "photo of", "include_trigger": True, "include_appearance": True,
                             "include_framing": True, "include_background": True, "caption": ["1", 3]}},
            "3": {"class_type": "ContinuitySaveDatasetVersion",
                  "inputs": {"images": ["1", 0], "name": "hero", "note": "first", "captions": ["2", 0],
                             "filenames": ["1", 2]}}}
    res = comfy.run(save)
    v1 = res.value("3", 1)
    assert res.value("3", 2) == 1 and v1.endswith(os.path.join("datasets", "hero", "v1"))
    man1 = json.load(open(os.path.join(v1, "manifest.json")))
    assert [r["source"] for r in man1["items"]] == ["img1.jpg", "img2.jpg", "img4.jpg"]
    assert open(os.path.join(v1, "img2.txt")).read().strip() == "photo of ohwx man, shot 2"
    before = _tree_hashes(v1)
    # saving again makes v2, never touches v1
    res = comfy.run(save)
    assert res.value("3", 2) == 2
    # feedback loop: load v1, "fix" img2 (flip it), merge -> v3
    merge = {"1": {"class_type": "ContinuityLoadDatasetVersion", "inputs": {"name": "hero", "version": 1}},
             "2": {"class_type": "ImageFlip", "inputs": {"image": ["1", 1], "flip_method": "x-axis: vertically"}},
             "3": {"class_type": "ContinuityMergeFixedImages",
                   "inputs": {"dataset": ["1", 0], "fixed_images": ["2", 0], "filenames": ["1", 3], "note": "fixed"}}}
    if not _has_node("ImageFlip"):
        merge["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}}
    res = comfy.run(merge)
    assert res.value("3", 2) == 3
    man3 = json.load(open(os.path.join(res.value("3", 1), "manifest.json")))
    assert man3["parent"] == "v1" and sorted(man3["provenance"]["replaced"]) == ["img1.png", "img2.png", "img4.png"]
    assert all(r["fixed_from"] == f"hero/v1/{r['file']}" for r in man3["items"])
    assert _tree_hashes(v1) == before


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


def _has_node(name):
    import nodes
    return name in nodes.NODE_CLASS_MAPPINGS
