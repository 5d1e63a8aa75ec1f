"""Training on the live server, through ComfyUI's HTTP API only: forged job files uploaded with
/upload/image (type=output + subfolder) are refused and nothing runs; the status routes answer 4xx
with a reason; a server stop leaves a true status.json and no trainer behind; a restarted server
would show that state."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import harness
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "support" / "fake_sdscripts"))
import _fake_trainer

pytestmark = pytest.mark.server


def _upload(server, subfolder: str, name: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (("type", "output"), ("subfolder", subfolder), ("overwrite", "true")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, _ = server.request("POST", "/upload/image", body,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return status


def _configure(base: Path, tmp: Path, control: dict | None = None) -> str:
    sd_root = _fake_trainer.install(str(tmp / "sd-scripts"), control=control)
    cfg = base / "user" / "continuity"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "training.json").write_text(json.dumps({"sd_scripts": sd_root, "python": sys.executable}))
    ck = base / "models" / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "base_sdxl.safetensors").write_bytes(b"0")
    folder = base / "input" / "train_live"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return sd_root


def _train(job_name: str, **kw) -> dict:
    inputs = {"preset": "sdxl_realistic", "job_name": job_name, "base_model": "checkpoints/base_sdxl.safetensors",
              "mode": "wait", "resume": False, "token": "ohwx", "class_phrase": "woman", "shot": "close",
              "mask_meaning": "1 = character (segmentation mask)", "epochs": 3, "steps": 0, "learning_rate": 0.0,
              "network_dim": 0, "network_alpha": 0.0, "overrides": "save_every_n_epochs = 1",
              "images": ["1", 0]}
    inputs.update(kw)
    return {"1": {"class_type": "ContinuityLoadImageFolder",
                  "inputs": {"folder": "train_live", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                             "caption_extension": ".txt"}},
            "2": {"class_type": "ContinuityTrainLoRA", "inputs": inputs}}


def _status(job_id: str) -> dict:
    return {"1": {"class_type": "ContinuityTrainingStatus", "inputs": {"job_id": job_id, "cancel": False}}}


def _error_text(entry: dict) -> str:
    """The node error's message (ComfyUI's traceback beside it names the pack's own files: not ours)."""
    return " ".join(m[1].get("exception_message", "") for m in entry["status"].get("messages", [])
                    if m[0] == "execution_error")


def test_forged_job_files_are_refused_and_nothing_runs(server, tmp_path):
    sd_root = _configure(server.base, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    job = {"job_id": "evil", "output_name": "evil", "preset": "sdxl_realistic", "version": 2,
           "argv": ["/bin/sh", "-c", f"touch {sentinel}"], "overrides": {}, "models": {}, "dataset": {}}
    sub = "continuity/training/evil"
    assert _upload(server, sub, "job.json", json.dumps(job).encode()) == 200
    assert _upload(server, f"{sub}/out/evil-step00000002-state", "train_state.json", b'{"current_step": 2}') == 200
    assert _upload(server, f"{sub}/out/evil-step00000002-state", "random_states_0.pkl",
                   b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR.") == 200
    assert _upload(server, sub, "states.json", json.dumps(
        {"evil-step00000002-state": {"step": 2, "files": {}}}).encode()) == 200
    assert _upload(server, sub, "status.json", b'{"job_id": "evil", "state": "running", "step": {"x": [1]}}') == 200
    assert (server.base / "output" / sub / "job.json").is_file()
    entry = server.run(_train("evil", resume=True), expect_success=False)
    text = _error_text(entry)
    assert entry["status"]["status_str"] == "error"
    assert "Train LoRA (Continuity)" in text and "job_name" in text and "not written by Continuity" in text
    assert str(server.base) not in text
    assert not sentinel.exists() and not _fake_trainer.invocations(sd_root), "nothing may run"
    # the status route: a reason, never a 500 or a server path
    status, raw = server.request("GET", "/continuity/train/jobs/evil")
    body = json.loads(raw)
    assert status == 422 and "status.json" in body["error"] and str(server.base) not in body["error"]
    status, _ = server.request("GET", "/continuity/train/jobs/..%2F..%2Fetc")
    assert status in (400, 404)
    status, _ = server.request("GET", "/continuity/train/jobs/nobody")
    assert status == 404
    # Training Status names the node and the input
    entry = server.run(_status("evil"), expect_success=False)
    assert "Training Status (Continuity)" in _error_text(entry) and "status.json" in _error_text(entry)
    # the server still runs prompts
    entry = server.run(_status("nobody"))
    assert entry["status"]["status_str"] == "success"


def test_server_stop_leaves_a_true_status_and_no_trainer(tmp_path, artifacts_dir):
    base = harness.make_base_dir(tmp_path / "comfy")
    sd_root = _configure(base, tmp_path, control={"hang_at_step": 3})
    srv = harness.LiveServer(base, artifacts_dir / "server-training-stop.log").start()
    try:
        entry = srv.run(_train("stop_job", mode="background"))
        assert entry["status"]["status_str"] == "success"
        deadline = time.time() + 60
        st = {}
        while time.time() < deadline:
            status, raw = srv.request("GET", "/continuity/train/jobs/stop_job")
            st = json.loads(raw) if status == 200 else {}
            if st.get("step") == 2:
                break
            time.sleep(0.1)
        assert st.get("step") == 2 and st["state"] == "running", st
        assert "pid" not in st and "job_dir" not in st
        pid = _fake_trainer.invocations(sd_root)[-1]["pid"]
    finally:
        srv.stop()
    job_dir = base / "output" / "continuity" / "training" / "stop_job"
    # signed by the server (its key comes from the same CONTINUITY_KEY_DIR as this process's):
    # what a restarted server reads back and shows (restart itself: test_realistic_core)
    from continuity.training import read_status_file
    on_disk = read_status_file(str(job_dir))
    assert on_disk["state"] == "stopped" and on_disk["step"] == 2 and "resume" in on_disk["error"]
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
