"""Character nodes inside ComfyUI (in-process): save, load, update, record, info; errors."""
import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfy


def _write_refs(comfy, folder, n=2, seed=0):
    d = comfy.base / "input" / folder
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((40, 32, 3)) * 255).astype(np.uint8)).save(d / f"ref{i}.png")
    return d


def _load_folder(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _save(name, refs_node=None, **kw):
    inputs = {"name": name, "trigger_word": kw.pop("trigger_word", ""), "class_phrase": kw.pop("class_phrase", ""),
              "style": kw.pop("style", "keep"), "threshold": kw.pop("threshold", 0.0), "notes": kw.pop("notes", "")}
    if refs_node:
        inputs["references"] = [refs_node, 0]
    inputs.update(kw)
    return {"class_type": "ContinuitySaveCharacter", "inputs": inputs}


def _files(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = os.stat(p).st_mtime_ns
    return out


def test_save_load_update_record_through_graphs(comfy):
    _write_refs(comfy, "char_refs_a", n=2)
    res = comfy.run({"1": _load_folder("char_refs_a"),
                     "2": _save("nina", "1", trigger_word="n1na", class_phrase="woman", style="animated",
                                threshold=0.55)})
    char = res.value("2", 0)
    assert char.revision == 1 and char.style == "animated" and len(char.references) == 2
    assert "nina (revision 1, animated)" in res.ui["2"]["text"][0]
    folder = comfy.base / "output" / "continuity" / "characters" / "nina"
    assert (folder / "manifest" / "000001.json").is_file()
    before = _files(folder)

    # the dropdown lists the new profile
    assert "nina" in str(comfy.node_class("ContinuityLoadCharacter").INPUT_TYPES()["required"]["name"])

    # load -> info, and update through the loaded character (name empty)
    res = comfy.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "nina", "revision": 0}},
        "2": {"class_type": "ContinuityCharacterInfo",
              "inputs": {"character": ["1", 0], "text": "smiling", "face_model_name": "", "stage": ""}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
        "4": _save("", None, class_phrase="young woman", character=["1", 0]),
    })
    assert res.value("1", 1) == "n1na" and res.value("1", 3) == "n1na woman"
    assert len(res.output("1", 4)) == 2 and tuple(res.output("1", 4)[0].shape) == (1, 40, 32, 3)
    assert res.value("2", 0) == "n1na woman, smiling"
    assert res.value("2", 4) == pytest.approx(0.55)
    assert len(res.ui["3"]["images"]) == 2
    updated = res.value("4", 0)
    assert updated.revision == 2 and updated.class_phrase == "young woman" and updated.trigger_word == "n1na"

    # record a LoRA after a training run
    res = comfy.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "nina", "revision": 0}},
        "2": {"class_type": "ContinuityRecordCharacterResult",
              "inputs": {"character": ["1", 0], "lora_name": "nina_s1.safetensors", "stage": "1",
                         "report": '{"mean_similarity": 0.71}'}},
    })
    rec = res.value("2", 0)
    assert rec.revision == 3 and rec.latest_lora()["name"] == "nina_s1.safetensors"
    assert rec.latest_lora()["report"] == {"mean_similarity": 0.71}

    # the old revision is still loadable, and no file was rewritten
    res = comfy.run({"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "nina", "revision": 1}},
                     "2": {"class_type": "ContinuityCharacterInfo",
                           "inputs": {"character": ["1", 0], "text": "", "face_model_name": "", "stage": ""}},
                     "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}}})
    assert res.value("1", 2) == "woman" and res.value("2", 5) == ""
    after = _files(folder)
    for rel, mtime in before.items():
        assert after[rel] == mtime, f"{rel} was rewritten"
    assert sorted(p for p in after if p.startswith("manifest")) == [
        "manifest/000001.json", "manifest/000002.json", "manifest/000003.json"]


def test_save_character_sets_the_style_thresholds(comfy):
    _write_refs(comfy, "char_refs_style", n=1, seed=3)
    res = comfy.run({"1": _load_folder("char_refs_style"),
                     "2": _save("toon", "1", style="animated", style_threshold=0.82, clip_style_threshold=0.6)})
    char = res.value("2", 0)
    assert char.style_threshold == pytest.approx(0.82) and char.clip_style_threshold == pytest.approx(0.6)
    # 0 keeps what the profile has; a new value makes a new revision
    res = comfy.run({"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "toon", "revision": 0}},
                     "2": _save("", None, character=["1", 0], notes="kept thresholds"),
                     "3": _save("", None, character=["2", 0], clip_style_threshold=0.7)})
    kept, changed = res.value("2", 0), res.value("3", 0)
    assert kept.revision == 2 and kept.style_threshold == pytest.approx(0.82)
    assert kept.clip_style_threshold == pytest.approx(0.6)
    assert changed.revision == 3 and changed.clip_style_threshold == pytest.approx(0.7)
    assert changed.style_threshold == pytest.approx(0.82)


def test_errors_name_node_and_input(comfy):
    # a new profile without references
    res = comfy.run({"1": _save("nobody")}, expect_success=False)
    msg = res.error["exception_message"]
    assert "Save Character (Continuity)" in msg and "'references'" in msg
    # a bad name
    _write_refs(comfy, "char_refs_b", n=1, seed=3)
    # a bad name is refused up front, at validation
    ok, _, _, node_errors = comfy.validate({"1": _load_folder("char_refs_b"), "2": _save("../escape", "1")})
    msg = str(node_errors)
    assert not ok and "input 'name'" in msg and "not a valid name" in msg
    assert not (comfy.base / "output" / "continuity" / "escape").exists()
    # loading a profile that does not exist: a clear error when it runs; a revision that does not exist:
    # refused at validation
    res = comfy.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "ghost", "revision": 0}},
        "2": {"class_type": "ContinuityRecordCharacterResult", "inputs": {"character": ["1", 0], "lora_name": "x"}}},
        expect_success=False)
    msg = res.error["exception_message"]
    assert "Load Character (Continuity), input 'name'" in msg and "no character profile 'ghost'" in msg
    comfy.run({"1": _load_folder("char_refs_b"), "2": _save("sole", "1")})
    ok, err, _, node_errors = comfy.validate({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "sole", "revision": 7}},
        "2": {"class_type": "ContinuityRecordCharacterResult", "inputs": {"character": ["1", 0], "lora_name": "x"}}})
    assert not ok and "has no revision 7" in str(node_errors)
    # nothing to record
    res = comfy.run({"1": _load_folder("char_refs_b"), "2": _save("solo", "1")})
    res = comfy.run({"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "solo", "revision": 0}},
                     "2": {"class_type": "ContinuityRecordCharacterResult", "inputs": {"character": ["1", 0]}}},
                    expect_success=False)
    assert "Record Character Result (Continuity)" in res.error["exception_message"]
    assert "nothing to record" in res.error["exception_message"]


def test_save_character_stores_mean_embedding_with_face_model(comfy, faces_dir):
    d = comfy.base / "input" / "char_real_refs"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("img1.jpg", "img2.jpg"):
        img = Image.open(faces_dir / f).convert("RGB")
        img.thumbnail((320, 320))
        img.save(d / f.replace(".jpg", ".png"))
    res = comfy.run({
        "1": _load_folder("char_real_refs"),
        "2": {"class_type": "ContinuityFaceModelLoader",
              "inputs": {"backend": "dlib", "parser": "landmarks", "embedder": "dlib", "device": "cpu"}},
        "3": _save("rhea", "1", trigger_word="rh3a", class_phrase="woman", face_model=["2", 0], model_threshold=0.9),
    })
    char = res.value("3", 0)
    (model, rec), = char.embeddings.items()
    assert rec["count"] == 2 and rec["dim"] == 128
    assert (comfy.base / "output" / "continuity" / "characters" / "rhea" / rec["file"]).is_file()
    mean = char.mean_embedding(model)
    assert mean.shape == (128,) and abs(float(np.linalg.norm(mean)) - 1) < 1e-5
    assert char.threshold(model) == pytest.approx(0.9)
    # the two references are the same person: each is close to the mean
    assert rec["self_similarity"] > 0.9


def test_character_feeds_the_scoring_node(comfy, faces_dir):
    """Character Info stands in for the separate inputs of nodes that take no CHARACTER yet."""
    from continuity import character as charlib
    root = str(comfy.base / "output" / "continuity" / "characters")

    def small(name, side=256):
        img = Image.open(faces_dir / name).convert("RGB")
        img.thumbnail((side, side))
        return img
    charlib.save_profile(root, "cora", trigger_word="c0ra", class_phrase="woman",
                         references=[np.asarray(small(f), np.float32) / 255 for f in ("img1.jpg", "img2.jpg")])
    d = comfy.base / "input" / "cora_cands"
    d.mkdir(parents=True, exist_ok=True)
    small("img4.jpg").save(d / "same.png")
    small("img13.jpg").save(d / "other.png")
    res = comfy.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "cora", "revision": 0}},
        "2": {"class_type": "ContinuityCharacterInfo",
              "inputs": {"character": ["1", 0], "text": "", "face_model_name": "", "stage": ""}},
        "3": _load_folder("cora_cands"),
        "4": {"class_type": "ContinuityFaceSimilarity",
              "inputs": {"references": ["2", 3], "candidates": ["3", 0], "filenames": ["3", 2], "model": "dlib",
                         "face_policy": "largest", "set_name": "cora"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    })
    scores = res.value("4", 0)
    ms = next(iter(scores.models.values()))
    assert len(ms.references) == 2
    other, same = ms.mean      # natural order: other.png, same.png
    assert same > other



def test_record_result_reads_train_job_and_dataset_values(comfy):
    """The TRAIN_JOB and DATASET values of the training and dataset nodes (dicts) are recorded."""
    from continuity import character as charlib
    root = str(comfy.base / "output" / "continuity" / "characters")
    charlib.save_profile(root, "dina", references=[np.zeros((8, 8, 3), np.float32)])
    cls = comfy.node_class("ContinuityRecordCharacterResult")
    char = comfy.node_class("ContinuityLoadCharacter").execute("dina", 0).args[0]
    job = {"job_id": "dina_v1", "job_dir": "/x", "lora_name": "dina_v1/dina_v1.safetensors", "state": "finished"}
    ds = {"name": "dina", "version": 3, "path": "/data/dina/v3", "manifest": {"items": []}}
    out = cls.execute(char, train_job=job, dataset=ds, stage="2", report='{"mean": 0.8}').args[0]
    lora = out.latest_lora()
    assert (lora["name"], lora["stage"], lora["dataset_version"], lora["job"]) == ("dina_v1/dina_v1.safetensors", "2", 3, "dina_v1")
    assert out.latest_dataset()["version"] == 3 and out.latest_dataset()["path"] == "/data/dina/v3"
    with pytest.raises(ValueError, match="the training job is running"):
        cls.execute(out, train_job=dict(job, state="running"))
