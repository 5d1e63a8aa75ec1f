"""Scoring and video nodes inside ComfyUI (in-process): graphs through the real executor."""
import json
import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfy


def _put(comfy, folder, faces_dir, names, side=480, extra_grey=False):
    d = comfy.base / "input" / folder
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        img = Image.open(faces_dir / n).convert("RGB")
        img.thumbnail((side, side))
        img.save(d / (os.path.splitext(n)[0] + ".png"))
    if extra_grey:
        Image.fromarray(np.full((200, 260, 3), 127, np.uint8)).save(d / "zz_grey.png")
    return folder


def _folder_node(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _sim_node(refs, cands, name, model="dlib", policy="largest", names=True):
    inputs = {"references": [refs, 0], "candidates": [cands, 0], "model": model, "face_policy": policy,
              "set_name": name}
    if names:
        inputs["filenames"] = [cands, 2]
    return {"class_type": "ContinuityFaceSimilarity", "inputs": inputs}


@pytest.fixture(scope="module")
def face_sets(comfy, faces_dir):
    _put(comfy, "sc_refs", faces_dir, ["img1.jpg", "img2.jpg", "img4.jpg"])
    _put(comfy, "sc_a", faces_dir, ["img5.jpg", "img6.jpg", "img7.jpg"], extra_grey=True)
    _put(comfy, "sc_b", faces_dir, ["img3.jpg", "img12.jpg", "img8.jpg"])
    return "sc_refs", "sc_a", "sc_b"


def test_similarity_select_and_report_graph(comfy, face_sets, artifacts_dir):
    refs, a, b = face_sets
    prompt = {
        "1": _folder_node(refs), "2": _folder_node(a), "3": _folder_node(b),
        "4": _sim_node("1", "2", "same person"), "5": _sim_node("1", "3", "others"),
        "6": {"class_type": "ContinuitySelectBySimilarity",
              "inputs": {"images": ["2", 0], "scores": ["4", 0], "metric": "mean", "use_model_threshold": True,
                         "threshold": 0.5, "model": ""}},
        "7": {"class_type": "ContinuityConsistencyReport",
              "inputs": {"scores_1": ["4", 0], "scores_2": ["5", 0], "plot_model": "", "save": True,
                         "filename_prefix": "continuity/reports/test_consistency"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}},
    }
    res = comfy.run(prompt)
    s_a = res.value("4", 0)
    assert res.value("4", 2) == 1                                      # the grey image
    ms = s_a.models["dlib"]
    assert ms.verdicts() == [True, True, True, None]
    assert "zz_grey.png: no score (no face found)" in res.value("4", 1)
    s_b = res.value("5", 0)
    assert all(v is not None and v < s_b.models["dlib"].threshold for v in s_b.models["dlib"].mean)
    # select: the three portraits of the person pass, the grey image goes to the fix list
    assert res.output("6", 2) == [0, 1, 2] and res.output("6", 3) == [3]
    assert res.output("6", 4) == ["img5.png", "img6.png", "img7.png"] and res.output("6", 5) == ["zz_grey.png"]
    assert [tuple(t.shape) for t in res.output("6", 1)] == [(1, 200, 260, 3)]
    # report: images, table and files
    bar, heat, lines, table, jpath, cpath = (res.value("7", i) for i in range(6))
    for img in (bar, heat, lines):
        assert img.shape[0] == 1 and img.shape[-1] == 3 and img.shape[1] > 200
        assert float(img.std()) > 0.05                                 # not a blank picture
    for i, img in enumerate((bar, heat, lines)):
        Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(artifacts_dir / f"scoring_report_{i}.png")
    assert "same person" in table and "others" in table
    out = comfy.base / "output"
    assert jpath.startswith(str(out)) and os.path.isfile(jpath) and os.path.isfile(cpath)
    doc = json.loads(open(jpath).read())
    rows = {r["set"]: r for r in doc["table"]}
    assert rows["same person"]["faces_missing"] == 1 and rows["same person"]["count"] == 4
    assert rows["same person"]["mean"] == pytest.approx(np.mean([v for v in ms.mean if v is not None]))
    assert rows["others"]["mean"] < rows["same person"]["mean"]
    grey = doc["sets"][0]["models"]["dlib"]["candidates"][3]
    assert grey["mean"] is None and grey["face_found"] is False
    csv_text = open(cpath).read().splitlines()
    assert csv_text[0].startswith("set,model,index,file") and len(csv_text) == 1 + 4 + 3
    assert len(res.ui["7"]["images"]) == 3
    # a second run never overwrites the first report
    res2 = comfy.run(prompt)
    j2 = res2.value("7", 4)
    assert j2 != jpath and os.path.isfile(jpath) and os.path.isfile(j2)


def test_reference_without_face_names_the_image(comfy, faces_dir):
    d = comfy.base / "input" / "sc_badref"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(d / "black.png")
    _put(comfy, "sc_badref", faces_dir, ["img1.jpg"])
    prompt = {"1": _folder_node("sc_badref"), "2": _folder_node("sc_badref"),
              "3": {"class_type": "ContinuityFaceSimilarity",
                    "inputs": {"references": ["1", 0], "candidates": ["2", 0], "model": "dlib",
                               "face_policy": "largest", "set_name": "x", "reference_names": ["1", 2]}},
              "4": {"class_type": "ContinuityConsistencyReport",
                    "inputs": {"scores_1": ["3", 0], "plot_model": "", "save": False, "filename_prefix": "r"}}}
    res = comfy.run(prompt, expect_success=False)
    assert not res.success
    msg = res.error["exception_message"]
    assert "Face Similarity (Continuity)" in msg and "'references'" in msg and "black.png" in msg


def test_missing_model_and_bad_prefix_are_clear(comfy, face_sets):
    refs, a, _ = face_sets
    prompt = {"1": _folder_node(refs), "2": _folder_node(a), "3": _sim_node("1", "2", "x", model="arcface"),
              "4": {"class_type": "ContinuityConsistencyReport",
                    "inputs": {"scores_1": ["3", 0], "plot_model": "", "save": False, "filename_prefix": "r"}}}
    res = comfy.run(prompt, expect_success=False)
    msg = res.error["exception_message"]
    assert "input 'model'" in msg and "w600k_r50.onnx" in msg and "insightface" in msg
    prompt["3"] = _sim_node("1", "2", "x")
    prompt["4"]["inputs"]["filename_prefix"] = "../../escape/r"
    ok, err, _, node_errors = comfy.validate(prompt)
    assert not ok and "outside the allowed folders" in json.dumps(node_errors)


def test_all_available_models_says_which_ran(comfy, face_sets):
    refs, _, b = face_sets
    prompt = {"1": _folder_node(refs), "2": _folder_node(b), "3": _sim_node("1", "2", "b", model="all available"),
              "4": {"class_type": "ContinuityIdentityModels", "inputs": {}},
              "5": {"class_type": "ContinuityConsistencyReport",
                    "inputs": {"scores_1": ["3", 0], "plot_model": "", "save": False, "filename_prefix": "r"}}}
    res = comfy.run(prompt)
    s = res.value("3", 0)
    assert list(s.models) == ["dlib"]
    assert set(s.unavailable) == {"arcface", "facenet", "openface", "deepid"}
    assert "[arcface] not run" in res.value("3", 1)
    listing = res.value("4", 0)
    assert "dlib (dlib ResNet 128-D), threshold 0.93: available" in listing
    assert "facenet" in listing and "not available" in listing


def test_in_mask_policy_scores_the_masked_face(comfy, faces_dir):
    from continuity.scoring.similarity import get_face_detector
    img = Image.open(faces_dir / "couple.jpg").convert("RGB")
    img.thumbnail((1000, 1000))
    d = comfy.base / "input" / "sc_couple"
    d.mkdir(parents=True, exist_ok=True)
    faces = get_face_detector().detect(np.asarray(img))
    assert len(faces) >= 2
    small = faces[-1]
    rgba = np.dstack([np.asarray(img), np.full(img.size[::-1], 255, np.uint8)])
    x0, y0, x1, y1 = (int(v) for v in small.box)
    rgba[y0:y1, x0:x1, 3] = 0                  # LoadImage mask = 1 - alpha: 1 on the small face
    Image.fromarray(rgba, "RGBA").save(d / "couple.png")
    prompt = {"1": _folder_node("sc_couple"),
              "3": {"class_type": "ContinuityFaceSimilarity",
                    "inputs": {"references": ["1", 0], "candidates": ["1", 0], "model": "dlib",
                               "face_policy": "in_mask", "set_name": "m", "candidate_masks": ["1", 1]}},
              "4": {"class_type": "ContinuityConsistencyReport",
                    "inputs": {"scores_1": ["3", 0], "plot_model": "", "save": False, "filename_prefix": "r"}}}
    res = comfy.run(prompt)
    c = res.value("3", 0).models["dlib"].candidates[0]
    assert c.found and c.n_faces == len(faces)
    assert abs(c.box[0] - small.box[0]) < 2 and abs(c.box[1] - small.box[1]) < 2
    # the reference used its largest face, a different person: the similarity is below 1
    assert res.value("3", 0).models["dlib"].mean[0] < 0.99


def test_check_identity_model_on_labelled_pairs(comfy, faces_dir, artifacts_dir):
    import csv
    names = ["img1.jpg", "img2.jpg", "img4.jpg", "img3.jpg", "img12.jpg", "img13.jpg"]
    d = comfy.base / "input" / "sc_pairs"
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        img = Image.open(faces_dir / n).convert("RGB")
        img.thumbnail((500, 500))
        img.save(d / n)
    with open(faces_dir / "pairs.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["file_x"] in names and r["file_y"] in names]
    assert any(r["Decision"] == "Yes" for r in rows) and any(r["Decision"] == "No" for r in rows)
    with open(d / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["file_x", "file_y", "Decision"])
        w.writeheader()
        w.writerows(rows)
    prompt = {"1": {"class_type": "ContinuityCalibrateIdentityModel",
                    "inputs": {"folder": "sc_pairs", "pairs_file": "pairs.csv", "model": "dlib"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 3]}}}
    res = comfy.run(prompt)
    auc, acc, thr, hist, text = (res.value("1", i) for i in range(5))
    assert thr == 0.93 and auc >= 0.99 and acc >= 0.9
    assert f"{len(rows)}/{len(rows)} pairs scored" in text
    Image.fromarray((hist[0].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "pairs_histogram.png")
    # a pairs file outside the input folder, or a missing one, is refused before running
    prompt["1"]["inputs"]["pairs_file"] = "../pairs.csv"
    ok, _, _, node_errors = comfy.validate(prompt)
    assert not ok and "pairs_file" in json.dumps(node_errors)
    prompt["1"]["inputs"]["pairs_file"] = "missing.csv"
    ok, _, _, node_errors = comfy.validate(prompt)
    assert not ok and "does not exist" in json.dumps(node_errors)
