"""Character Training Plan node in ComfyUI (in-process) against the fake sd-scripts."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfy


@pytest.fixture()
def fake_sd(tmp_path, monkeypatch, comfy):
    from fake_sdscripts import _fake_trainer
    dest = _fake_trainer.install(str(tmp_path / "sd-scripts"))
    monkeypatch.setenv("CONTINUITY_SD_SCRIPTS", dest)
    monkeypatch.setenv("CONTINUITY_SD_SCRIPTS_PYTHON", sys.executable)
    ck = comfy.base / "models" / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "plan_base.safetensors").write_bytes(b"not a real model")
    return _fake_trainer, dest


def _dataset(comfy, name, layout):
    rng = np.random.default_rng(1)
    root = comfy.base / "input" / name
    for folder, n in layout.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
            (d / f"{i}.txt").write_text(f"{folder} shot")
    return name


def _profile(comfy, name):
    from continuity import character as charlib
    charlib.save_profile(str(comfy.base / "output" / "continuity" / "characters"), name, trigger_word="zx9",
                         class_phrase="man", references=[np.full((16, 16, 3), 0.5, np.float32)])


def _graph(name, ds, plan="three_stage", prefix=""):
    return {
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": name, "revision": 0}},
        "2": {"class_type": "ContinuityCharacterTrainingPlan",
              "inputs": {"character": ["1", 0], "plan": plan, "custom_plan": "", "training_preset": "sdxl_realistic",
                         "checkpoint": "plan_base.safetensors", "overrides": "max_train_epochs = 1",
                         "dataset_path": ds, "job_prefix": prefix}},
    }


def test_three_stage_plan_node_records_each_stage(comfy, fake_sd):
    fake, sd_root = fake_sd
    _profile(comfy, "theo")
    ds = _dataset(comfy, "theo_ds", {"closeup": 2, "portrait": 1, "expressions": 1, "poses": 1})
    res = comfy.run(_graph("theo", ds, prefix="theo_ok"))
    char, lora_name, report = res.value("2", 0), res.value("2", 1), res.value("2", 2)
    calls = fake.invocations(sd_root)
    assert len(calls) == 3
    loras = char.loras
    assert [entry["stage"] for entry in loras] == [1, 2, 3]
    assert [entry["stage_name"] for entry in loras] == ["appearance", "details", "expressions"]
    assert loras[0]["network_weights"] is None
    for i in (1, 2):
        argv = calls[i]["argv"]
        assert argv[argv.index("--network_weights") + 1] == os.path.realpath(loras[i - 1]["path"])
    assert lora_name == loras[-1]["name"] == "theo_ok_s3_expressions/theo_ok_s3_expressions.safetensors"
    assert (comfy.base / "models" / "loras" / lora_name).is_file()
    assert "3/3 stages done" in report
    assert char.revision == 4       # create + one revision per stage


def test_plan_node_consistency_report_per_stage(comfy, fake_sd, faces_dir):
    fake, sd_root = fake_sd
    from continuity import character as charlib
    ref = Image.open(faces_dir / "img1.jpg").convert("RGB")
    ref.thumbnail((256, 256))
    charlib.save_profile(str(comfy.base / "output" / "continuity" / "characters"), "wes", trigger_word="zx9",
                         class_phrase="man", references=[np.asarray(ref, np.float32) / 255])
    ds = _dataset(comfy, "wes_ds", {"closeup": 1, "portrait": 1})
    g = _graph("wes", ds, plan="custom", prefix="wes_eval")
    g["2"]["inputs"]["custom_plan"] = '[{"name": "all"}, {"name": "closeups", "subsets": ["closeup"], "repeats": 2}]'
    g["3"] = {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}}
    g["2"]["inputs"].update({"model": ["3", 0], "clip": ["3", 1], "vae": ["3", 2], "eval_images": 2,
                             "eval_resolution": 64, "eval_steps": 2})
    res = comfy.run(g)
    char = res.value("2", 0)
    reports = [entry["report"] for entry in char.loras]
    assert len(reports) == 2
    for rep in reports:
        # the tiny random models draw no faces: counted as missing, never given a made-up score
        assert rep["count"] == 2 and rep["scored"] + rep["faces_missing"] == 2 and len(rep["per_image"]) == 2
        assert rep["prompts"][0].startswith("zx9 man, close-up")
    assert "2/2 stages done" in res.value("2", 2)


def test_plan_node_failure_in_stage_two_keeps_stage_one(comfy, fake_sd):
    fake, sd_root = fake_sd
    _profile(comfy, "uma")
    # stage 1: 4 images x 1 repeat = 4 steps; stage 2: 2 close-ups x 3 repeats = 6 steps -> fails at step 5
    ds = _dataset(comfy, "uma_ds", {"closeup": 2, "portrait": 1, "expressions": 1})
    fake.set_control(sd_root, {"fail_at_step": 5})
    res = comfy.run(_graph("uma", ds, prefix="uma_fail"), expect_success=False)
    msg = res.error["exception_message"]
    assert "Character Training Plan (Continuity)" in msg
    assert "stage 2 of 3 ('details') failed" in msg and "out of memory" in msg
    assert "Kept: stage 1 ('appearance')" in msg
    assert len(fake.invocations(sd_root)) == 2
    from continuity import character as charlib
    root = str(comfy.base / "output" / "continuity" / "characters")
    char = charlib.load_profile(root, "uma")
    assert len(char.loras) == 1 and char.loras[0]["stage_name"] == "appearance" and os.path.isfile(char.loras[0]["path"])
    assert [h["action"] for h in charlib.history(char.folder)] == ["create", "training", "plan_failed"]


def test_plan_node_bad_inputs(comfy, fake_sd):
    _profile(comfy, "vic")
    ds = _dataset(comfy, "vic_ds", {"closeup": 1})
    g = _graph("vic", ds, plan="custom")
    g["2"]["inputs"]["custom_plan"] = '[{"name": "a", "bogus": 1}]'
    ok, _, _, node_errors = comfy.validate(g)
    assert not ok and "unknown keys bogus" in str(node_errors)
    g = _graph("vic", ds)   # three_stage on a dataset with close-ups only: stage 3 has no images
    res = comfy.run(g, expect_success=False)
    assert "stage 3 ('expressions') selects no image" in res.error["exception_message"]
    # a plan with a refine stage and no model: refused before any job starts, naming the node and 'model'
    res = comfy.run(_graph("vic", ds, plan="two_step"), expect_success=False)
    msg = res.error["exception_message"]
    assert "Character Training Plan (Continuity), input 'model'" in msg
    assert "second" in msg and "2-step refine loop" in msg and "Nothing was trained" in msg
    g = _graph("vic", ds, plan="custom")
    g["2"]["inputs"]["custom_plan"] = '[{"name": "a"}, {"name": "b", "refine": true}]'
    g["3"] = {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}}
    g["2"]["inputs"].update({"model": ["3", 0], "clip": ["3", 1]})     # no vae
    res = comfy.run(g, expect_success=False)
    assert "input 'model'" in res.error["exception_message"] and "vae not connected" in res.error["exception_message"]
    g = _graph("vic", "../../etc")
    res = comfy.run(g, expect_success=False)
    assert "outside the allowed folders" in res.error["exception_message"]
    assert fake_sd[0].invocations(fake_sd[1]) == []


def _provenance(version_path):
    """The provenance of a dataset version, read back through the store."""
    from continuity.dataset import versions as vs
    name_dir, v = os.path.split(version_path)
    return vs.load_version(os.path.dirname(name_dir), os.path.basename(name_dir), int(v[1:])).provenance


def _files(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_mtime_ns, st.st_size, open(p, "rb").read())
    return out


def _two_step_graph(name, ds, prefix, n):
    g = _graph(name, ds, plan="two_step", prefix=prefix)
    g["3"] = {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}}
    g["4"] = {"class_type": "ContinuityTestCentreFaceModel", "inputs": {}}
    g["2"]["inputs"].update({"model": ["3", 0], "clip": ["3", 1], "vae": ["3", 2], "face_model": ["4", 0],
                             "refine_images": n, "eval_resolution": 64, "eval_steps": 1})
    return g


def test_two_step_plan_node_refines_into_a_new_dataset_version(comfy, fake_sd, faces_dir):
    """two_step in the node: stage 2 continues from stage 1's LoRA on a new dataset version (the old
    images as they were + refine/). The tiny models draw no real faces, so the test face model takes
    the centre of every image as the face and a 4x4-pixel vector as its identity: real, deterministic
    cosine scores. Run 1 sets a threshold no image reaches (every face is fixed, nothing is kept); run 2
    puts the threshold between run 1's final scores, so some images are kept and others not."""

    from continuity import character as charlib
    from continuity.character import growth
    fake, sd_root = fake_sd
    root = str(comfy.base / "output" / "continuity" / "characters")
    refs = []
    for f in ("img1.jpg", "img2.jpg"):
        im = Image.open(faces_dir / f).convert("RGB")
        im.thumbnail((128, 128))
        refs.append(np.asarray(im, np.float32) / 255)
    charlib.save_profile(root, "rena", trigger_word="r3na", class_phrase="woman", references=refs,
                         thresholds={"test-pixels": 1.0})
    ds = _dataset(comfy, "rena_ds", {"closeup": 2, "portrait": 1})
    ds_dir = str(comfy.base / "input" / ds)
    before = _files(ds_dir)
    n = 4

    res = comfy.run(_two_step_graph("rena", ds, "rena_a", n))
    char, report = res.value("2", 0), res.value("2", 2)
    calls = fake.invocations(sd_root)
    assert len(calls) == 2
    s1, s2 = char.loras[-2:]
    argv = calls[1]["argv"]
    assert argv[argv.index("--network_weights") + 1] == os.path.realpath(s1["path"])
    # the refine step wrote and recorded a new version; stage 2 trained on it
    ver = char.latest_dataset()
    assert ver["step"] == "refine" and ver["stage"] == "second" and ver["previous"] == os.path.realpath(ds_dir)
    assert s2["dataset"] == ver["path"] and s2["dataset_version"] == ver["version"] and s1["dataset"] == os.path.realpath(ds_dir)
    v = ver["path"]
    # the one dataset-version format and output root: output/continuity/datasets/<character>/vN
    assert os.path.dirname(v) == os.path.realpath(comfy.base / "output" / "continuity" / "datasets" / "rena")
    prov = _provenance(v)
    imgs = prov["images"]
    assert len(imgs) == n and prov["threshold"] == 1.0 and prov["previous_version"] == os.path.basename(ds_dir)
    assert all(i["faces"] == 1 and i["before"] is not None and i["fix_score"] is not None for i in imgs)  # all fixed
    assert not any(i["kept"] for i in imgs)
    assert all(i["fixed"] == (i["fix_score"] is not None and i["fix_score"] >= i["before"]) for i in imgs)
    assert [i["layer"] for i in imgs] == [growth.LAYERS[k % 5] for k in range(n)]
    assert s2["images"] == 3 and s2["refine"]["kept"] == 0 and s2["refine"]["generated"] == n
    # the old images, untouched, in both the old folder and the new version
    assert _files(ds_dir) == before
    new_files = _files(v)
    for rel, (_, _, data) in before.items():       # images as they were; captions with the same words
        assert new_files[rel][2] == data if rel.endswith(".png") else new_files[rel][2].strip() == data.strip()
    assert sorted(new_files) == sorted([*before, "manifest.json"])
    # the report: the refine step, and the consistency before (stage 1's LoRA) and after (stage 2's)
    assert "2/2 stages done" in report and f"refine: {n} test images with stage 1's LoRA" in report
    assert "consistency before (stage 1's LoRA): mean" in report and f"passing 0/{n}" in report
    assert s1["report"]["count"] == n and s2["report"]["count"] == n

    # run 2: a threshold between run 1's final scores
    finals = sorted(i["fixed"] and i["fix_score"] or i["before"] for i in imgs)
    splits = [k for k in range(n - 1) if finals[k + 1] - finals[k] > 1e-3]
    assert splits, finals
    k = min(splits, key=lambda k: abs(k + 1 - n / 2))          # the split nearest the middle
    thr = (finals[k] + finals[k + 1]) / 2
    charlib.save_profile(root, "rena", thresholds={"test-pixels": thr})
    res = comfy.run(_two_step_graph("rena", ds, "rena_b", n))
    char2, report2 = res.value("2", 0), res.value("2", 2)
    ver2 = char2.latest_dataset()
    assert ver2["version"] == ver["version"] + 1 and ver2["previous"] == os.path.realpath(ds_dir)
    prov2 = _provenance(ver2["path"])
    imgs2 = prov2["images"]
    expected = [(i["fixed"] and i["fix_score"] or i["before"]) >= thr for i in imgs]
    assert [i["kept"] for i in imgs2] == expected and 0 < sum(expected) < n
    for a, b in zip(imgs, imgs2):
        assert b["before"] == pytest.approx(a["before"], abs=1e-5)
        # only the images below the threshold get the fix; a fix is kept only if the score did not drop
        assert bool(b["fix_note"]) == (b["before"] < thr)
        assert b["fixed"] == (b["fix_score"] is not None and b["fix_score"] >= b["before"])
        if b["kept"]:
            assert b["score"] >= thr and ("fixed:" in b["reason"]) == b["fixed"]
            png = os.path.join(ver2["path"], b["file"])
            assert os.path.isfile(png) and b["file"].startswith("refine/")
            # the dataset's captions are framing words only (the preset adds the trigger): so are these
            assert open(png[:-4] + ".txt").read().strip() == growth.LAYER_PROMPT[b["layer"]]
        else:
            assert "< threshold" in b["reason"] and not b["file"]
    s2b = char2.loras[-1]
    assert s2b["images"] == 3 + sum(expected) and s2b["dataset"] == ver2["path"]
    assert f"{sum(expected)} kept -> dataset v{ver2['version']} (refine/" in report2
    # the earlier versions are still as they were
    assert _files(ds_dir) == before and _files(v) == new_files
    # stage 2's job trained on the old images and the kept ones
    toml = open(os.path.join(comfy.base, "output", "continuity", "training", s2b["job"], "dataset.toml")).read()
    img_dir = toml.split('image_dir = "')[1].split('"')[0]
    assert len([f for f in os.listdir(img_dir) if f.endswith(".png")]) == 3 + sum(expected)


def test_train_lora_takes_a_character(comfy, fake_sd):
    """Train LoRA with a CHARACTER: its trigger word and class phrase replace token and class_phrase."""
    fake, sd_root = fake_sd
    _profile(comfy, "xan")     # trigger zx9, class man
    ds = _dataset(comfy, "xan_ds", {"closeup": 2})
    train = {"preset": "sdxl_realistic", "job_name": "xan_char_job", "base_model": "plan_base.safetensors",
             "mode": "wait", "resume": False, "token": "ohwx", "class_phrase": "woman", "shot": "close",
             "mask_meaning": "1 = character (segmentation mask)", "epochs": 1, "steps": 0, "learning_rate": 0.0,
             "network_dim": 0, "network_alpha": 0.0, "overrides": "", "images": ["2", 0], "captions": ["2", 3],
             "character": ["1", 0]}
    res = comfy.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "xan", "revision": 0}},
        "2": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": f"{ds}/closeup", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "3": {"class_type": "ContinuityTrainLoRA", "inputs": train},
        "4": {"class_type": "ContinuityRecordCharacterResult",
              "inputs": {"character": ["1", 0], "train_job": ["3", 0], "stage": "1"}},
    })
    job_dir = comfy.base / "output" / "continuity" / "training" / "xan_char_job"
    captions = sorted(p.read_text() for p in job_dir.rglob("*.txt"))
    assert captions and all(c.startswith("zx9 man") for c in captions), captions
    assert res.value("4", 0).latest_lora()["name"] == "xan_char_job/xan_char_job.safetensors"
