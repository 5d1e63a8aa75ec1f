"""The real launcher driving a fake sd-scripts that prints sd-scripts' exact progress output."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support" / "fake_sdscripts"))
import _fake_trainer

from continuity.errors import ContinuityError
from continuity.training import (REGISTRY, TrainingCancelled, TrainingFailed, create_job, find_states, latest_state,
                                 launch, load_job, load_preset, load_sd_scripts, read_status_file)


@pytest.fixture()
def setup(tmp_path):
    sd_root = _fake_trainer.install(str(tmp_path / "sd-scripts"))
    sd = load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": sd_root, "CONTINUITY_SD_SCRIPTS_PYTHON": sys.executable})
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "base.safetensors").write_bytes(b"0")
    (models / "loras").mkdir()

    def make(name="job1", epochs=4, n=3, overrides=None, **kw):
        rng = np.random.default_rng(0)
        ov = {"max_train_epochs": epochs, "save_every_n_epochs": 1}
        ov.update(overrides or {})
        return create_job(jobs_root=str(tmp_path / "jobs"), loras_root=str(models / "loras"), job_name=name,
                          preset=load_preset("sdxl_realistic"), overrides=ov, python=sd.python,
                          sd_scripts_root=sd.root, models={"pretrained_model_name_or_path": str(models / "checkpoints" / "base.safetensors")},
                          model_roots=[str(models)], images=[rng.random((64, 64, 3)) for _ in range(n)],
                          token="ohwx", class_phrase="woman", **kw)
    return sd_root, make, models


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie awaiting its parent counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_launch_progress_loss_and_lora(setup):
    sd_root, make, models = setup
    job = make(epochs=4, n=3)
    events = []
    path = launch(job, events.append)
    assert path == os.path.join(str(models / "loras"), "job1", "job1.safetensors") and os.path.isfile(path)
    steps = [e for e in events if e.kind == "step"]
    assert steps and steps[-1].step == 12 and steps[-1].total == 12 == job.total_steps
    losses = [e.loss for e in steps if e.loss is not None]
    assert losses and all(0.1 < x < 0.16 for x in losses) and losses[-1] < losses[0]
    assert [e.epoch for e in events if e.kind == "epoch"] == [1, 2, 3, 4]
    assert any(e.kind == "checkpoint" and e.checkpoint.endswith("job1-000002.safetensors") for e in events)
    inv = _fake_trainer.invocations(sd_root)
    assert len(inv) == 1 and inv[0]["python"] == sys.executable
    assert inv[0]["pgid"] == inv[0]["pid"], "sd-scripts must run in its own process group"
    log = next(Path(job.job_dir, "logs").glob("run*.log")).read_text()
    assert "avr_loss=" in log and "epoch 4/4" in log and "# exit code 0" in log
    # finished: launching again is refused, the LoRA is never overwritten
    with pytest.raises(ContinuityError, match="already finished"):
        launch(job)


def test_failure_raises_with_log_tail(setup):
    sd_root, make, _ = setup
    job = make()
    _fake_trainer.set_control(sd_root, {"fail_at_step": 5})
    with pytest.raises(TrainingFailed) as err:
        launch(job)
    msg = str(err.value)
    assert "exited with code 1" in msg and "CUDA out of memory" in msg and "run.log" in msg
    assert not os.path.exists(job.lora_path)


def test_exit_zero_without_lora_is_an_error(setup):
    sd_root, make, _ = setup
    job = make(epochs=1)
    _fake_trainer.set_control(sd_root, {"no_output_file": True})
    with pytest.raises(TrainingFailed, match="wrote no LoRA"):
        launch(job)


def test_cancel_stops_the_whole_group_then_resume_from_latest_state(setup):
    sd_root, make, _ = setup
    job = make(epochs=6, n=2)
    # stubborn: ignores SIGINT and SIGTERM and has a child that ignores both: only SIGKILL of the group works
    _fake_trainer.set_control(sd_root, {"hang_at_step": 7, "ignore_sigint": True, "ignore_sigterm": True,
                                        "spawn_child": True})
    cancel = threading.Event()
    seen = []

    def on_progress(ev):
        seen.append(ev)
        if ev.kind == "step" and ev.step >= 6:
            cancel.set()

    t0 = time.time()
    with pytest.raises(TrainingCancelled, match="resume from job1-000003-state"):
        launch(job, on_progress, cancel, grace=(0.5, 0.5))
    assert time.time() - t0 < 30
    inv = _fake_trainer.invocations(sd_root)
    children = [int(x) for x in Path(sd_root, "children.txt").read_text().split()]
    time.sleep(0.2)
    assert not _alive(inv[0]["pid"]) and not any(_alive(c) for c in children), "a process was left behind"
    states = find_states(job)
    assert [os.path.basename(s) for s in states] == ["job1-000001-state", "job1-000002-state", "job1-000003-state"]
    assert latest_state(job) == states[-1]
    # resume continues from step 6 (the latest state), to the end
    _fake_trainer.set_control(sd_root, {})
    events = []
    path = launch(job, events.append, resume=True)
    assert os.path.isfile(path)
    argv = _fake_trainer.invocations(sd_root)[-1]["argv"]
    # the checked private copy of the latest recorded state, skipping the steps it holds
    assert os.path.basename(argv[argv.index("--resume") + 1]) == os.path.basename(states[-1])
    assert "--skip_until_initial_step" in argv
    steps = [(e.step, e.total) for e in events if e.kind == "step"]
    assert min(steps)[0] >= 6 and max(steps) == (12, 12) and all(t == 12 for _, t in steps)
    assert len(list(Path(job.job_dir, "logs").glob("run*.log"))) == 2, "each run keeps its own log"


def test_sigint_is_enough_for_a_well_behaved_trainer(setup):
    sd_root, make, _ = setup
    job = make(epochs=3)
    _fake_trainer.set_control(sd_root, {"hang_at_step": 2})
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    t0 = time.time()
    with pytest.raises(TrainingCancelled):
        launch(job, None, cancel, grace=(20, 20))
    assert time.time() - t0 < 10  # did not need the SIGTERM/SIGKILL grace periods
    assert not _alive(_fake_trainer.invocations(sd_root)[0]["pid"])


def test_resume_without_state_is_refused(setup):
    _, make, _ = setup
    job = make()
    with pytest.raises(ContinuityError, match="no saved state"):
        launch(job, resume=True)


def test_background_registry(setup):
    sd_root, make, _ = setup
    job = make(name="bg", epochs=3)
    updates = []
    REGISTRY.listeners.append(updates.append)
    try:
        job_id = REGISTRY.start(job)
        assert job_id == "bg"
        st = REGISTRY.wait(job_id, 60)
    finally:
        REGISTRY.listeners.remove(updates.append)
    assert st["state"] == "finished" and st["lora_name"] == "bg/bg.safetensors" and st["step"] == st["total"] == 9
    assert os.path.isfile(job.lora_path)
    assert len(st["losses"]) >= 2 and updates[-1]["state"] == "finished"
    on_disk = read_status_file(job.job_dir)
    assert on_disk["state"] == "finished" and on_disk["step"] == 9
    # a failing job reports through the status, never raises into the server
    job2 = make(name="bg2")
    _fake_trainer.set_control(sd_root, {"fail_at_step": 2})
    REGISTRY.start(job2)
    st2 = REGISTRY.wait("bg2", 60)
    assert st2["state"] == "failed" and "CUDA out of memory" in st2["error"]
    # cancel
    job3 = make(name="bg3")
    _fake_trainer.set_control(sd_root, {"hang_at_step": 3})
    REGISTRY.start(job3, grace=(2, 2))
    time.sleep(1.0)
    assert REGISTRY.cancel("bg3")
    assert REGISTRY.wait("bg3", 30)["state"] == "cancelled"


def test_job_reload_from_folder(setup):
    _, make, models = setup
    job = make(name="again")
    kw = dict(loras_root=str(models / "loras"), python=job.python, sd_root=job.sd_root, model_roots=job.model_roots)
    assert load_job(job.job_dir, **kw) == job
    with pytest.raises(ContinuityError):
        load_job(os.path.dirname(job.job_dir), **kw)
