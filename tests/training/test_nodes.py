"""Train LoRA / Training Status nodes in the in-process ComfyUI, driving the fake sd-scripts."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support" / "fake_sdscripts"))
import _fake_trainer

pytestmark = pytest.mark.comfy


@pytest.fixture()
def env(comfy, tmp_path, monkeypatch):
    sd_root = _fake_trainer.install(str(tmp_path / "sd-scripts"))
    monkeypatch.setenv("CONTINUITY_SD_SCRIPTS", sd_root)
    monkeypatch.setenv("CONTINUITY_SD_SCRIPTS_PYTHON", sys.executable)
    ck = comfy.base / "models" / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "base_sdxl.safetensors").write_bytes(b"0")
    (ck / "legacy.ckpt").write_bytes(b"0")
    (comfy.base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    # websocket messages: PromptServer.instance is the harness's recording server
    import server
    monkeypatch.setattr(server.PromptServer, "instance", comfy.server, raising=False)
    # ComfyUI's progress bar hook, as main.py installs it
    import comfy.utils as cu
    calls = []
    import comfy.model_management as mm

    def hook(value, total, preview, prompt_id=None, node_id=None):
        mm.throw_exception_if_processing_interrupted()   # as main.py's hook: raises AND clears the flag
        calls.append((value, total, node_id))
    monkeypatch.setattr(cu, "PROGRESS_BAR_HOOK", hook)
    folder = comfy.base / "input" / f"train_{tmp_path.name}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        rgb = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        alpha = np.zeros((64, 64), np.uint8)
        alpha[8:56, 16:48] = 255  # a cut-out: opaque character
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / f"img{i + 1}.png")
        (folder / f"img{i + 1}.txt").write_text(f"pose {i + 1}")
    return sd_root, folder.name, calls


def _prompt(folder, job_name="x_job", **kw):
    inputs = {"preset": "sdxl_realistic", "job_name": job_name, "base_model": "checkpoints/base_sdxl.safetensors",
              "mode": "wait", "resume": False, "token": "ohwx", "class_phrase": "woman", "shot": "close",
              "mask_meaning": "1 = background (MASK from LoadImage of a cut-out)", "epochs": 2, "steps": 0,
              "learning_rate": 0.0, "network_dim": 0, "network_alpha": 0.0, "overrides": "save_every_n_epochs = 1",
              "images": ["1", 0], "masks": ["1", 1], "captions": ["1", 3]}
    inputs.update(kw)
    return {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "2": {"class_type": "ContinuityTrainLoRA", "inputs": inputs},
    }


def test_train_node_wait_mode_progress_websocket_and_lora(comfy, env):
    sd_root, folder, calls = env
    res = comfy.run(_prompt(folder, "node_job"))
    job, lora_name, logs = (res.value("2", i) for i in range(3))
    assert lora_name == "node_job/node_job.safetensors"
    assert (comfy.base / "models" / "loras" / "node_job" / "node_job.safetensors").is_file()
    import folder_paths
    assert lora_name in folder_paths.get_filename_list("loras")  # LoraLoader can pick it
    assert job["state"] == "finished" and (comfy.base / "output" / logs).is_dir() and not Path(logs).is_absolute()
    # masks: LoadImage's MASK (1 - alpha) turned back into alpha = the opaque character
    png = comfy.base / "output" / "continuity" / "training" / "node_job" / "img" / "0001.png"
    a = np.asarray(Image.open(png))[..., 3]
    assert a[30, 30] == 255 and a[2, 2] == 0
    assert (png.parent / "0001.txt").read_text().strip() == "ohwx woman, pose 1"
    # progress bar reached the end for this node, websocket events carried the loss
    assert calls and calls[-1][:2] == (6, 6) and calls[-1][2] == "2"
    msgs = [d for e, d in res.messages if e == "continuity.train.progress"]
    assert msgs and msgs[-1]["state"] == "finished" and msgs[-1]["lora_name"] == lora_name
    # each step's last value reaches the client: its own loss, not the previous step's
    last_point = {}
    for m in msgs:
        if m.get("point"):
            last_point[m["point"][0]] = m["point"][1]
    assert last_point == {k: _fake_trainer.fake_loss(k) for k in range(1, 7)}
    assert all(m["node"] == "2" for m in msgs)
    # wait mode writes status.json too
    from importlib import import_module
    mod = import_module(comfy.pack_module.__name__ + ".continuity.training")
    st = mod.read_status_file(str(comfy.base / "output" / "continuity" / "training" / "node_job"))
    assert st["state"] == "finished" and st["step"] == st["total"] == 6 and st["mode"] == "wait"
    argv = _fake_trainer.invocations(sd_root)[-1]["argv"]
    assert argv[argv.index("--max_train_epochs") + 1] == "2"
    assert "--save_state" in argv and "--console_log_simple" in argv


def test_train_node_failure_message_has_log_tail(comfy, env):
    sd_root, folder, _ = env
    _fake_trainer.set_control(sd_root, {"fail_at_step": 2})
    res = comfy.run(_prompt(folder, "failing_job"), expect_success=False)
    msg = res.error["exception_message"]
    assert "Train LoRA (Continuity)" in msg and "CUDA out of memory" in msg and "exited with code 1" in msg
    assert not (comfy.base / "models" / "loras" / "failing_job").exists()


def test_interrupt_stops_process_group_and_resume(comfy, env):
    sd_root, folder, _ = env
    _fake_trainer.set_control(sd_root, {"hang_at_step": 5, "ignore_sigint": False})
    import comfy.model_management as mm

    def interrupt_when_hanging():
        for _ in range(200):
            inv = _fake_trainer.invocations(sd_root)
            state = comfy.base / "output" / "continuity" / "training" / "int_job" / "out" / "int_job-000001-state"
            if inv and state.is_dir():
                time.sleep(0.3)
                mm.interrupt_current_processing(True)
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt_when_hanging)
    t.start()
    res = comfy.run(_prompt(folder, "int_job", epochs=3), expect_success=False)
    t.join()
    # reported as a cancel, although the progress hook cleared ComfyUI's interrupt flag
    events = [e for e, _ in comfy.executor.status_messages]
    assert not res.success and "execution_interrupted" in events and "execution_error" not in events
    pid = _fake_trainer.invocations(sd_root)[0]["pid"]
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    mm.interrupt_current_processing(False)
    # resume from the latest state: no images needed
    _fake_trainer.set_control(sd_root, {})
    p = _prompt(folder, "int_job", epochs=3, resume=True)
    res = comfy.run(p)
    assert res.value("2", 1) == "int_job/int_job.safetensors"
    argv = _fake_trainer.invocations(sd_root)[-1]["argv"]
    assert argv[argv.index("--resume") + 1].endswith("int_job-000001-state") and "--skip_until_initial_step" in argv


def test_background_mode_and_status_node(comfy, env):
    sd_root, folder, _ = env
    _fake_trainer.set_control(sd_root, {"step_delay": 0.05})
    t0 = time.time()
    res = comfy.run(_prompt(folder, "bg_job", mode="background", epochs=4))
    assert time.time() - t0 < 5
    job = res.value("2", 0)
    assert job["state"] == "running" and res.value("2", 1) == "bg_job/bg_job.safetensors"
    status = {"1": {"class_type": "ContinuityTrainingStatus", "inputs": {"job_id": "bg_job", "cancel": False}}}
    deadline = time.time() + 60
    while time.time() < deadline:
        r = comfy.run(status)
        if r.value("1", 0) == "finished":
            break
        time.sleep(0.2)
    assert r.value("1", 0) == "finished" and r.value("1", 1) == 12 and 0 < r.value("1", 2) < 1
    assert r.value("1", 3) == "bg_job/bg_job.safetensors"
    st = r.ui["1"]["continuity_train"][0]
    assert len(st["losses"]) >= 2 and "job_dir" not in st
    # cancel through the status node
    _fake_trainer.set_control(sd_root, {"hang_at_step": 3})
    comfy.run(_prompt(folder, "bg_cancel", mode="background", epochs=4))
    time.sleep(1.0)
    comfy.run({"1": {"class_type": "ContinuityTrainingStatus", "inputs": {"job_id": "bg_cancel", "cancel": True}}})
    from importlib import import_module
    mod = import_module(comfy.pack_module.__name__ + ".continuity.training")
    final = mod.REGISTRY.wait("bg_cancel", 60)
    assert final["state"] == "cancelled"


@pytest.mark.parametrize("change,needle", [
    ({"job_name": "../../etc"}, "job_name"),
    ({"job_name": "a; rm -rf /"}, "job_name"),
    ({"overrides": "network_module = evil.module"}, "network_module"),
    ({"overrides": "sample_prompts = /etc/passwd"}, "cannot be overridden"),
    ({"overrides": "optimizer_type = AdamW`id`"}, "optimizer_type"),
])
def test_bad_inputs_refused_with_clear_message(comfy, env, change, needle):
    _, folder, _ = env
    kw = {"job_name": "x_job", **change}
    ok, err, _, node_errors = comfy.validate(_prompt(folder, **kw))
    text = str(err) + str(node_errors)
    if ok:  # refused at execution instead
        res = comfy.run(_prompt(folder, **kw), expect_success=False)
        text = res.error["exception_message"]
    assert "Train LoRA (Continuity)" in text and needle in text


def test_missing_sd_scripts_message(comfy, env, monkeypatch):
    _, folder, _ = env
    monkeypatch.delenv("CONTINUITY_SD_SCRIPTS")
    res = comfy.run(_prompt(folder, "nosd_job"), expect_success=False)
    msg = res.error["exception_message"]
    assert "sd-scripts is not configured" in msg and "v0.10.1" in msg and "CONTINUITY_SD_SCRIPTS" in msg


def test_existing_job_not_overwritten(comfy, env):
    _, folder, _ = env
    comfy.run(_prompt(folder, "dup_job", epochs=1))
    before = (comfy.base / "models" / "loras" / "dup_job" / "dup_job.safetensors").read_bytes()
    res = comfy.run(_prompt(folder, "dup_job", epochs=1), expect_success=False)
    assert "already exists" in res.error["exception_message"] and str(comfy.base) not in res.error["exception_message"]
    assert (comfy.base / "models" / "loras" / "dup_job" / "dup_job.safetensors").read_bytes() == before


@pytest.mark.parametrize("preset,overrides,needle", [
    ("sdxl_realistic", "optimizer_type = Adafactor\nlr_scheduler = constant_with_warmup\nlr_warmup_steps = 10",
     "Adafactor"),
    ("shot_type", "cache_text_encoder_outputs = true\nnetwork_train_unet_only = true", "train_network.py"),
    ("sdxl_realistic", "optimizer_type = DAdaptAdam", "extra_optimizers"),
])
def test_refused_settings_leave_no_job_folder(comfy, env, preset, overrides, needle):
    _, folder, _ = env
    name = f"refused_{preset}_{len(overrides)}"
    res = comfy.run(_prompt(folder, name, preset=preset, overrides=overrides), expect_success=False)
    msg = res.error["exception_message"]
    assert "Train LoRA (Continuity)" in msg and "overrides" in msg and needle in msg
    assert not (comfy.base / "output" / "continuity" / "training" / name).exists()


def test_dataset_version_masks_unused_warning_and_resume_status(comfy, env):
    sd_root, folder, _ = env
    graph = _prompt(folder, "ds_job", preset="shot_type", epochs=1)
    graph["3"] = {"class_type": "ContinuitySaveDatasetVersion",
                  "inputs": {"images": ["1", 0], "name": "ds_for_training", "note": "", "captions": ["1", 3],
                             "masks": ["1", 1]}}
    ins = graph["2"]["inputs"]
    for k in ("images", "masks", "captions"):
        ins.pop(k)
    ins["dataset"] = ["3", 0]
    res = comfy.run(graph)
    text = " ".join(res.ui["2"]["text"])
    assert "LoRA written: ds_job/ds_job.safetensors" in text
    assert "masks were given" in text, "shot_type trains without masked loss: the user is told"
    # Training Status after a wait-mode run shows the finished job (status.json is written in wait mode too)
    r = comfy.run({"1": {"class_type": "ContinuityTrainingStatus", "inputs": {"job_id": "ds_job", "cancel": False}}})
    assert r.value("1", 0) == "finished" and r.value("1", 3) == "ds_job/ds_job.safetensors"


def test_base_model_plain_file_name_accepted_unknown_refused(comfy, env):
    _, folder, _ = env
    res = comfy.run(_prompt(folder, "bare_name_job", base_model="base_sdxl.safetensors", epochs=1))
    assert res.value("2", 1) == "bare_name_job/bare_name_job.safetensors"
    ok, err, _, node_errors = comfy.validate(_prompt(folder, "unknown_model_job", base_model="nope.safetensors"))
    assert not ok and "base_model" in str(node_errors) and "not one of the choices" in str(node_errors)


def test_status_shown_to_others_has_no_log_tail_or_server_path(comfy, env):
    sd_root, folder, _ = env
    _fake_trainer.set_control(sd_root, {"fail_at_step": 2})
    comfy.run(_prompt(folder, "tail_job", mode="background", epochs=1))
    from importlib import import_module
    tmod = import_module(comfy.pack_module.__name__ + ".continuity.training")
    nmod = import_module(comfy.pack_module.__name__ + ".nodes.training")
    assert tmod.REGISTRY.wait("tail_job", 60)["state"] == "failed"
    for st in (nmod.job_status("tail_job"), comfy.run(
            {"1": {"class_type": "ContinuityTrainingStatus", "inputs": {"job_id": "tail_job", "cancel": False}}}
    ).ui["1"]["continuity_train"][0]):
        text = json.dumps(st)
        assert "exited with code 1" in text and "CUDA out of memory" not in text, "no log tail for other clients"
        assert str(comfy.base) not in text and "pid" not in st
