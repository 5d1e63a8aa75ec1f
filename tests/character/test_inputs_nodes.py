"""The scoring, video and dataset nodes take a CHARACTER in place of their separate inputs."""
import json
import os

import numpy as np
import pytest
from PIL import Image

SAME = ("img1.jpg", "img2.jpg")          # the character's reference portraits
CANDIDATES = {"a_same.png": "img4.jpg", "b_other.png": "img13.jpg"}   # same person / someone else


def _small(faces_dir, name, side=256):
    img = Image.open(faces_dir / name).convert("RGB")
    img.thumbnail((side, side))
    return img


def _square(faces_dir, name, side=192):
    img = Image.open(faces_dir / name).convert("RGB")
    s = min(img.size)
    img = img.crop(((img.width - s) // 2, (img.height - s) // 2, (img.width - s) // 2 + s, (img.height - s) // 2 + s))
    return img.resize((side, side), Image.LANCZOS)


def _profile(base, name, faces_dir, **kw):
    from continuity import character as charlib
    root = str(base / "output" / "continuity" / "characters")
    refs = [np.asarray(_small(faces_dir, f), np.float32) / 255 for f in SAME]
    return charlib.save_profile(root, name, references=refs, **kw)


def _cands(base, folder, faces_dir, square=False):
    d = base / "input" / folder
    d.mkdir(parents=True, exist_ok=True)
    for out, src in CANDIDATES.items():
        (_square if square else _small)(faces_dir, src).save(d / out)
    return folder


def _load_folder(folder, mode="list"):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": mode, "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _load_char(name):
    return {"class_type": "ContinuityLoadCharacter", "inputs": {"name": name, "revision": 0}}


def _similarity(cands, **extra):
    inputs = {"candidates": [cands, 0], "filenames": [cands, 2], "model": "dlib", "face_policy": "largest",
              "set_name": "s"}
    inputs.update(extra)
    return {"class_type": "ContinuityFaceSimilarity", "inputs": inputs}


def _preview(node, i):
    return {"class_type": "PreviewAny", "inputs": {"source": [node, i]}}


# ----------------------------------------------------------------------------- scoring

@pytest.mark.comfy
def test_face_similarity_takes_references_and_threshold_from_the_character(comfy, faces_dir):
    _profile(comfy.base, "ci_sim", faces_dir, trigger_word="c1", class_phrase="woman", thresholds={"dlib": 0.42})
    cands = _cands(comfy.base, "ci_sim_cands", faces_dir)
    # the same portraits given as separate references, for comparison
    refdir = comfy.base / "input" / "ci_sim_refs"
    refdir.mkdir(parents=True, exist_ok=True)
    for f in SAME:
        _small(faces_dir, f).save(refdir / f.replace(".jpg", ".png"))
    res = comfy.run({
        "1": _load_char("ci_sim"),
        "2": _load_folder(cands),
        "3": _similarity("2", character=["1", 0]),                 # no references connected
        "4": _load_folder("ci_sim_refs"),
        "5": _similarity("2", references=["4", 0]),                # references, no character
        "6": _preview("3", 1), "7": _preview("5", 1),
    })
    with_char, plain = res.value("3", 0).models["dlib"], res.value("5", 0).models["dlib"]
    assert len(with_char.references) == 2
    # the character's portraits were used: the same scores as with the portraits given separately
    np.testing.assert_allclose(with_char.mean, plain.mean, atol=1e-4)
    same, other = with_char.mean
    assert same > other
    # the character's threshold replaces the model's own in the verdicts
    assert with_char.threshold == pytest.approx(0.42)
    assert plain.threshold != pytest.approx(0.42)
    assert "threshold 0.420" in res.value("3", 1)


@pytest.mark.comfy
def test_face_similarity_without_references_or_character_names_node_and_input(comfy, faces_dir):
    cands = _cands(comfy.base, "ci_none_cands", faces_dir)
    res = comfy.run({"2": _load_folder(cands), "3": _similarity("2"), "6": _preview("3", 1)}, expect_success=False)
    msg = res.error["exception_message"]
    assert "Face Similarity (Continuity)" in msg and "'references'" in msg and "character" in msg


@pytest.mark.comfy
def test_select_by_similarity_uses_the_characters_threshold(comfy, faces_dir):
    # a threshold no real pair reaches, and a widget threshold every score passes: which one is used shows
    _profile(comfy.base, "ci_sel", faces_dir, default_threshold=0.999)
    cands = _cands(comfy.base, "ci_sel_cands", faces_dir)
    sel = {"images": ["2", 0], "scores": ["3", 0], "metric": "mean", "use_model_threshold": False,
           "threshold": -1.0, "model": ""}
    res = comfy.run({
        "1": _load_char("ci_sel"),
        "2": _load_folder(cands),
        "3": _similarity("2", character=["1", 0]),
        "4": {"class_type": "ContinuitySelectBySimilarity", "inputs": dict(sel)},
        "5": {"class_type": "ContinuitySelectBySimilarity", "inputs": dict(sel, character=["1", 0])},
        "6": _preview("4", 6), "7": _preview("5", 6),
    })
    assert res.output("4", 4) == ["a_same.png", "b_other.png"]        # the widget's -1.0: all pass
    assert res.output("5", 4) == [] and res.output("5", 5) == ["a_same.png", "b_other.png"]
    assert ">= 0.9990" in res.value("5", 6) and "character 'ci_sel'" in res.value("5", 6)


@pytest.mark.comfy
def test_identity_over_frames_takes_the_characters_references(comfy, faces_dir):
    _profile(comfy.base, "ci_vid", faces_dir, thresholds={"dlib": 0.5})
    frames = _cands(comfy.base, "ci_vid_frames", faces_dir, square=True)
    res = comfy.run({
        "1": _load_char("ci_vid"),
        "2": _load_folder(frames, mode="batch"),
        "3": {"class_type": "ContinuityIdentityOverFrames",
              "inputs": {"frames": ["2", 0], "model": "dlib", "face_policy": "largest", "character": ["1", 0]}},
        "4": _preview("3", 5),
    })
    scores = res.value("3", 4).models["dlib"]
    assert len(scores.references) == 2 and scores.threshold == pytest.approx(0.5)
    same, other = scores.mean
    assert same > other
    assert "threshold 0.5" in res.value("3", 5)
    # neither references nor a character: a clear error
    res = comfy.run({"2": _load_folder(frames, mode="batch"),
                     "3": {"class_type": "ContinuityIdentityOverFrames",
                           "inputs": {"frames": ["2", 0], "model": "dlib", "face_policy": "largest"}},
                     "4": _preview("3", 5)}, expect_success=False)
    msg = res.error["exception_message"]
    assert "Identity Over Frames (Continuity)" in msg and "'references'" in msg


# ----------------------------------------------------------------------------- dataset

def _caption(**extra):
    inputs = {"trigger": "ohwx", "class_word": "man", "appearance": "red hair", "framing": "close-up",
              "background": "", "extra": "", "prefix": "photo of", "include_trigger": True,
              "include_appearance": True, "include_framing": True, "include_background": True}
    inputs.update(extra)
    return {"class_type": "ContinuityBuildCaption", "inputs": inputs}


@pytest.mark.comfy
def test_build_caption_takes_trigger_and_class_from_the_character(comfy, faces_dir):
    _profile(comfy.base, "ci_cap", faces_dir, trigger_word="k4te", class_phrase="young woman")
    res = comfy.run({"1": _load_char("ci_cap"), "2": _caption(character=["1", 0]), "3": _caption(),
                     "4": _preview("2", 0), "5": _preview("3", 0)})
    cap, reg = res.value("2", 0), res.value("2", 1)
    assert "k4te young woman" in cap and "ohwx" not in cap and " man" not in cap.replace("woman", "")
    assert "young woman" in reg and "k4te" not in reg
    assert "ohwx man" in res.value("3", 0)          # without the character: the widgets


@pytest.mark.comfy
def test_save_dataset_version_is_named_after_the_character(comfy, faces_dir):
    char = _profile(comfy.base, "ci_ds", faces_dir)
    cands = _cands(comfy.base, "ci_ds_imgs", faces_dir)
    root = comfy.base / "output" / "continuity" / "datasets"
    res = comfy.run({"1": _load_char("ci_ds"), "2": _load_folder(cands),
                     "3": {"class_type": "ContinuitySaveDatasetVersion",
                           "inputs": {"images": ["2", 0], "name": "widget_name", "note": "first cut",
                                      "filenames": ["2", 2], "character": ["1", 0]}}})
    path = res.value("3", 1)
    assert os.path.realpath(path) == os.path.realpath(root / "ci_ds" / "v1")
    assert not (root / "widget_name").exists()
    assert res.value("3", 0)["name"] == "ci_ds" and res.value("3", 2) == 1
    manifest = json.loads((root / "ci_ds" / "v1" / "manifest.json").read_text())
    assert f"character ci_ds (revision {char.revision})" in json.dumps(manifest) and "first cut" in json.dumps(manifest)


def _audit(images, **extra):
    inputs = {"images": [images, 0], "filenames": [images, 2], "identity_model": "dlib", "min_side": 64,
              "min_count": 1, "yaw_threshold": 20.0, "pitch_threshold": 25.0, "use_person_mask": False}
    inputs.update(extra)
    return {"class_type": "ContinuityDatasetAudit", "inputs": inputs}


@pytest.mark.comfy
def test_dataset_audit_judges_identity_against_the_character(comfy, faces_dir):
    rng = np.random.default_rng(0)
    far = rng.standard_normal((3, 128)).astype(np.float32)        # a stored mean no real face is near
    _profile(comfy.base, "ci_aud_refs", faces_dir)               # no stored mean: the portraits are embedded
    _profile(comfy.base, "ci_aud_mean", faces_dir, embeddings={"dlib": far})   # a stored mean, not used
    imgs = _cands(comfy.base, "ci_aud_imgs", faces_dir, square=True)
    res = comfy.run({"1": _load_char("ci_aud_refs"), "2": _load_char("ci_aud_mean"), "3": _load_folder(imgs),
                     "4": _audit("3", character=["1", 0]), "5": _audit("3", character=["2", 0]), "6": _audit("3")})
    by_refs, by_mean, by_set = (json.loads(res.value(n, 1)) for n in ("4", "5", "6"))
    assert by_refs["summary"]["identity_against"] == "references"
    assert by_mean["summary"]["identity_against"] == "references"
    assert by_set["summary"]["identity_against"] == "set"
    refs_rows = {r["name"]: r for r in by_refs["images"]}
    mean_rows = {r["name"]: r for r in by_mean["images"]}
    # against the character's portraits: the same person is closer than someone else
    assert refs_rows["a_same.png"]["identity"] > refs_rows["b_other.png"]["identity"]
    # the identity measure is the mean of the cosines to the portraits: a stored mean embedding (here a
    # random direction) does not change it
    assert all(mean_rows[k]["identity"] == refs_rows[k]["identity"] for k in refs_rows)


# ----------------------------------------------------------------------------- live server

@pytest.mark.server
def test_character_drives_scoring_in_the_live_server(server, faces_dir):
    _profile(server.base, "ci_live", faces_dir, trigger_word="l1ve", class_phrase="woman", default_threshold=0.999)
    cands = _cands(server.base, "ci_live_cands", faces_dir)
    entry = server.run({
        "1": _load_char("ci_live"),
        "2": _load_folder(cands),
        "3": _similarity("2", character=["1", 0]),
        "4": {"class_type": "ContinuitySelectBySimilarity",
              "inputs": {"images": ["2", 0], "scores": ["3", 0], "metric": "mean", "use_model_threshold": True,
                         "threshold": 0.5, "model": "", "character": ["1", 0]}},
        "5": _caption(character=["1", 0]),
        "6": _preview("4", 6), "7": _preview("5", 0),
    })
    assert entry["status"]["status_str"] == "success"
    outs = json.dumps(entry["outputs"])
    assert "threshold 0.999" in json.dumps(entry["outputs"]["3"])        # Face Similarity's summary
    assert "0 passed, 2 failed" in outs and "character 'ci_live'" in outs
    assert "l1ve woman" in json.dumps(entry["outputs"]["7"])
