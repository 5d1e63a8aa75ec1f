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
    res = comfy.run(_graph("vic", ds, plan="two_step"), expect_success=False)
    assert "refine loop, which this node cannot run" in res.error["exception_message"]
    g = _graph("vic", "../../etc")
    res = comfy.run(g, expect_success=False)
    assert "outside the allowed folders" in res.error["exception_message"]
    assert fake_sd[0].invocations(fake_sd[1]) == []


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
    job_dir = comfy.base / "output" / "continuity_training" / "xan_char_job"
    captions = sorted(p.read_text() for p in job_dir.rglob("*.txt"))
    assert captions and all(c.startswith("zx9 man") for c in captions), captions
    assert res.value("4", 0).latest_lora()["name"] == "xan_char_job/xan_char_job.safetensors"
