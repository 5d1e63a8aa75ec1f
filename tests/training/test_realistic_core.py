"""Training against a fake sd-scripts that behaves like the real v0.10.1 (see the fake's docstring):
progress on time per step, resume to the original total without overwriting states, settings
refused before a folder exists, server stop and restart, and the read-back of job files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "support" / "fake_sdscripts"))
import _fake_trainer

from continuity import store
from continuity.errors import ContinuityError
from continuity.training import (JobRegistry, TrainingCancelled, TrainingFailed, create_job,
                                 find_states, launch, load_job, load_preset, load_sd_scripts, read_status_file,
                                 reconcile)
from continuity.training import launcher as tl
from continuity.training import registry as treg
from continuity.training.registry import JobStatus, write_status_file

fake_loss = _fake_trainer.fake_loss


@pytest.fixture()
def rig(tmp_path):
    sd_root = _fake_trainer.install(str(tmp_path / "sd-scripts"))
    sd = load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": sd_root, "CONTINUITY_SD_SCRIPTS_PYTHON": sys.executable})
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "base.safetensors").write_bytes(b"0")
    (models / "loras").mkdir()
    jobs = tmp_path / "jobs"

    def make(name="job1", overrides=None, n=2, preset="sdxl_realistic", sizes=None, reg=None, **kw):
        rng = np.random.default_rng(0)
        imgs = [rng.random((h, w, 3)).astype(np.float32) for w, h in (sizes or [(64, 64)] * n)]
        return create_job(jobs_root=str(jobs), loras_root=str(models / "loras"), job_name=name,
                          preset=load_preset(preset), overrides=dict(overrides or {}), python=sd.python,
                          sd_scripts_root=sd.root,
                          models={"pretrained_model_name_or_path": str(models / "checkpoints" / "base.safetensors")},
                          model_roots=[str(models)], images=imgs, token="ohwx", class_phrase="woman",
                          shot="close" if preset == "shot_type" else "", reg_images=reg, **kw)
    return sd_root, make, jobs, models


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(cond, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------ progress
@pytest.mark.parametrize("framing", ["end", "start"])
def test_each_render_is_parsed_when_it_arrives_and_a_step_keeps_its_last_loss(rig, framing):
    sd_root, make, _, _ = rig
    job = make(overrides={"max_train_steps": 8})
    _fake_trainer.set_control(sd_root, {"pause_after_step": 3, "framing": framing})
    st, cancel, seen = JobStatus(job), threading.Event(), []

    def on_progress(ev):
        seen.append(ev)
        st.apply(ev)
    t = threading.Thread(target=lambda: pytest.raises(TrainingCancelled, launch, job, on_progress, cancel,
                                                      grace=(2, 2)))
    t.start()
    try:
        # the trainer now sits after step 3's renders: step 3 and its own loss must be here already
        assert _wait_for(lambda: st.step == 3 and st.losses and st.losses[-1] == [3, fake_loss(3)]), st.losses
        assert _alive(_fake_trainer.invocations(sd_root)[-1]["pid"]), "the trainer must still be paused"
    finally:
        cancel.set()
        t.join(30)
    assert st.losses == [[k, fake_loss(k)] for k in (1, 2, 3)]
    assert st.total == 8
    # each step was rendered twice, the first time with the previous step's loss
    step2 = [e.loss for e in seen if e.kind == "step" and e.step == 2]
    assert step2 == [fake_loss(1), fake_loss(2)]


# ------------------------------------------------------------------ resume
def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_ends_at_the_original_total_and_overwrites_no_state(rig):
    sd_root, make, _, _ = rig
    job = make(overrides={"max_train_steps": 10, "save_every_n_steps": 3})
    assert job.total_steps == 10
    reg = JobRegistry()
    _fake_trainer.set_control(sd_root, {"hang_at_step": 8})
    reg.start(job, mode="background", grace=(2, 2))
    assert _wait_for(lambda: reg.status(job.job_id)["step"] == 7)
    reg.cancel(job.job_id)
    first = reg.wait(job.job_id, 30)
    assert first["state"] == "cancelled" and first["step"] == 7
    states = [os.path.basename(s) for s in find_states(job)]
    assert states == ["job1-step00000003-state", "job1-step00000006-state"]
    before = {s: _tree(Path(job.output_dir) / s) for s in states}
    # resume: absolute steps 7..10 of 10 on the node, the route and status.json
    _fake_trainer.set_control(sd_root, {})
    events = []
    reg.start(job, resume=True, mode="background", listener=events.append)
    final = reg.wait(job.job_id, 60)
    assert final["state"] == "finished" and final["step"] == final["total"] == 10, final
    steps = [(e.step, e.total) for e in events if e.kind == "step"]
    assert steps[0] == (6, 10) and steps[1][0] == 7 and steps[-1] == (10, 10) and {t for _, t in steps} == {10}
    assert read_status_file(job.job_dir)["step"] == 10 and read_status_file(job.job_dir)["total"] == 10
    assert [p[0] for p in final["losses"]] == list(range(1, 11)), "one curve across both runs"
    assert final["losses"][-1] == [10, fake_loss(10)]
    # the first run's states are untouched; the resumed run numbered its save after them
    assert {s: _tree(Path(job.output_dir) / s) for s in states} == before
    assert "job1-step00000009-state" in [os.path.basename(s) for s in find_states(job)]
    argv = _fake_trainer.invocations(sd_root)[-1]["argv"]
    assert "--skip_until_initial_step" in argv


def test_the_fake_resumes_like_v0_10_1_without_skip_until_initial_step(rig):
    """Without the flag the real trainer starts counting at 0 again and overwrites state folders:
    the fake must do the same, or the pack's tests could not catch a launcher that forgets it."""
    sd_root, make, _, _ = rig
    job = make(overrides={"max_train_steps": 6, "save_every_n_steps": 3})
    _fake_trainer.set_control(sd_root, {"hang_at_step": 5})
    with pytest.raises(TrainingCancelled):
        cancel = threading.Event()
        threading.Timer(1.5, cancel.set).start()
        launch(job, None, cancel, grace=(2, 2))
    state = Path(job.output_dir) / "job1-step00000003-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 3
    before = (state / "optimizer.bin").read_bytes()
    _fake_trainer.set_control(sd_root, {})
    argv = job.command(dataset_config=str(Path(job.job_dir) / "dataset.toml"), resume=str(state)).argv
    argv.remove("--skip_until_initial_step")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    renders = [r for r in out.stderr.splitlines() if "steps:" in r and "/" in r]
    # the bar counts from 0 against the full total, bounded by the epochs left (a 6-step job resumed at 3
    # ends at 4/6, which the old launcher showed as 7/9), and the save at its step 3 overwrote the state
    assert "| 0/6 " in renders[0] and "| 1/6 " in renders[1] and "| 4/6 " in renders[-1]
    assert (state / "optimizer.bin").read_bytes() != before


# ------------------------------------------------------------------ step estimate
def test_step_estimate_counts_reg_images_and_bucket_batches(rig):
    sd_root, make, _, _ = rig
    rng = np.random.default_rng(3)
    reg = [rng.random((64, 64, 3)).astype(np.float32) for _ in range(5)]
    sizes = [(512, 512)] * 3 + [(384, 640)] * 2           # two buckets
    job = make(overrides={"max_train_epochs": 2, "train_batch_size": 2}, sizes=sizes, reg=reg)
    events = []
    launch(job, events.append)
    printed = [e.total for e in events if e.kind == "total"]
    # 5 images + 5 balanced reg samples; square bucket 3 + 5 = 8 -> 4 batches, tall bucket 2 -> 1: 5 per epoch
    assert printed == [job.total_steps] == [10]
    naive = -(-5 // 2) * 2
    assert job.total_steps != naive


# ------------------------------------------------------------------ refusals, before anything is written
@pytest.mark.parametrize("preset,overrides,needle", [
    ("shot_type", {"cache_text_encoder_outputs": "true", "network_train_unet_only": "true"},
     "does not apply to train_network.py"),
    ("sdxl_realistic", {"optimizer_type": "DAdaptAdam"}, "extra_optimizers"),
    ("sdxl_realistic", {"optimizer_type": "Adafactor", "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10},
     "Adafactor"),
    ("flux_animated", {"optimizer_type": "Adafactor"}, "lr_warmup_steps = 0"),
    ("sdxl_realistic", {"reg_num_repeats": 2}, "balance"),
    ("sdxl_realistic", {"full_bf16": "true", "mixed_precision": "fp16"}, "full_bf16"),
    ("sdxl_realistic", {"resolution": 1000}, "multiple of 64"),
    ("sdxl_realistic", {"lr_scheduler": "constant", "lr_warmup_steps": 5}, "constant"),
])
def test_settings_sd_scripts_refuses_are_refused_before_a_job_folder_exists(rig, preset, overrides, needle):
    _, make, jobs, _ = rig
    with pytest.raises(ContinuityError) as err:
        make(name="refused", overrides=overrides, preset=preset)
    assert needle in str(err.value)
    assert not jobs.exists() or os.listdir(jobs) == [], "nothing may be written for a refused setting"


@pytest.mark.parametrize("argv_change,needle", [
    (["--optimizer_type", "DAdaptAdam"], "dadaptation"),
    (["--optimizer_type", "Adafactor", "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "5"],
     "does not require num_warmup_steps"),
    (["--full_bf16", "--mixed_precision", "fp16"], "full_bf16"),
])
def test_the_fake_refuses_what_sd_scripts_refuses(rig, argv_change, needle):
    sd_root, make, _, _ = rig
    job = make(overrides={"max_train_steps": 2})
    argv = job.command(dataset_config=str(Path(job.job_dir) / "dataset.toml")).argv
    for opt in argv_change:
        if opt.startswith("--") and opt in argv:
            i = argv.index(opt)
            del argv[i:i + (1 if i + 1 >= len(argv) or argv[i + 1].startswith("--") else 2)]
    out = subprocess.run(argv + argv_change, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and needle in out.stderr


def test_train_network_py_has_its_own_contract_and_bucket_bounds_follow_the_resolution(rig):
    sd_root, make, _, _ = rig
    # SD 1.5 at 192 px: below the preset's min_bucket_reso 256, which sd-scripts would refuse: bounds adjusted
    job = make(name="sd15", preset="shot_type", overrides={"resolution": 192, "max_train_epochs": 1})
    cfg = tomllib.loads((Path(job.job_dir) / "dataset.toml").read_text())["datasets"][0]
    assert cfg["min_bucket_reso"] <= 192 <= cfg["max_bucket_reso"]
    assert os.path.isfile(launch(job))
    inv = _fake_trainer.invocations(sd_root)[-1]
    assert inv["script"] == "train_network.py"
    # and the fake's own parser for train_network.py refuses an SDXL-only option, as the real one does
    out = subprocess.run([sys.executable, os.path.join(sd_root, "train_network.py"), "--cache_text_encoder_outputs"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_masks_given_but_unused_are_warned_about(rig):
    _, make, _, _ = rig
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 8:40] = 1
    job = make(name="st", preset="shot_type", masks=[mask, mask], overrides={"max_train_epochs": 1})
    assert any("masks were given" in w and "masked_loss" in w for w in job.warnings)
    assert not make(name="sx", masks=[mask, mask]).warnings
    assert load_job(job.job_dir, loras_root=str(Path(job.lora_dir).parent), python=job.python, sd_root=job.sd_root,
                    model_roots=job.model_roots).warnings == job.warnings


def test_extra_optimizer_allowed_when_the_server_says_it_is_installed(rig):
    sd_root, make, _, _ = rig
    job = make(name="dadapt", overrides={"optimizer_type": "DAdaptAdam", "max_train_steps": 2},
               extra_optimizers=("DAdaptAdam",))
    _fake_trainer.set_control(sd_root, {"installed_optimizers": ["DAdaptAdam"]})
    assert os.path.isfile(launch(job))


# ------------------------------------------------------------------ server-side settings
def test_tokenizer_cache_setting_is_passed(rig, tmp_path):
    sd_root, make, _, _ = rig
    user = tmp_path / "user"
    (user / "continuity").mkdir(parents=True)
    cache = tmp_path / "tokenizers"
    (user / "continuity" / "training.json").write_text(json.dumps(
        {"sd_scripts": sd_root, "python": sys.executable, "tokenizer_cache_dir": str(cache)}))
    sd = load_sd_scripts(str(user), env={})
    assert sd.tokenizer_cache_dir == str(cache)
    _fake_trainer.set_control(sd_root, {"offline": True})
    offline = make(name="nocache", overrides={"max_train_steps": 2})
    with pytest.raises(TrainingFailed, match="huggingface"):
        launch(offline)
    job = make(name="cache", overrides={"max_train_steps": 2}, tokenizer_cache_dir=sd.tokenizer_cache_dir)
    assert os.path.isfile(launch(job))
    argv = _fake_trainer.invocations(sd_root)[-1]["argv"]
    assert argv[argv.index("--tokenizer_cache_dir") + 1] == str(cache)


def test_version_check_reads_tags_of_a_git_worktree(tmp_path):
    main = _fake_trainer.install(str(tmp_path / "main"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    # move the tag into packed-refs (git gc does) and make a linked worktree at that commit
    os.remove(os.path.join(main, ".git", "refs", "tags", "v0.10.1"))
    Path(main, ".git", "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/tags/v0.10.1\n")
    wt = tmp_path / "wt"
    import shutil
    shutil.copytree(main, wt, ignore=shutil.ignore_patterns(".git"))
    wgit = Path(main, ".git", "worktrees", "wt")
    wgit.mkdir(parents=True)
    (wgit / "HEAD").write_text(commit + "\n")
    (wgit / "commondir").write_text("../..\n")
    (wt / ".git").write_text(f"gitdir: {wgit}\n")
    sd = load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": str(wt), "CONTINUITY_SD_SCRIPTS_PYTHON": sys.executable})
    assert sd.version == "v0.10.1"


# ------------------------------------------------------------------ server stop and restart
def test_server_stop_stops_the_trainer_and_leaves_a_true_status(rig):
    sd_root, make, _, _ = rig
    job = make(name="stopme", overrides={"max_train_steps": 10})
    _fake_trainer.set_control(sd_root, {"hang_at_step": 4})
    reg = JobRegistry()
    reg.start(job, mode="wait", grace=(2, 2))
    assert _wait_for(lambda: reg.status("stopme")["step"] == 3)
    pid = _fake_trainer.invocations(sd_root)[-1]["pid"]
    reg.shutdown(grace=(2, 2))
    st = read_status_file(job.job_dir)
    assert st["state"] == "stopped" and st["step"] == 3 and st["total"] == 10 and "resume" in st["error"]
    assert st["pid"] is None
    assert _wait_for(lambda: not _alive(pid), 10)
    with pytest.raises(ContinuityError, match="stopping"):
        reg.start(job)


def test_restart_shows_the_true_state_of_jobs_left_running(rig, tmp_path):
    _, make, jobs, _ = rig
    orphan_job = make(name="orphan")
    stale_job = make(name="stale")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        for j, pid in ((orphan_job, proc.pid), (stale_job, 999_999)):
            st = JobStatus(j)
            st.state, st.step, st.pid = "running", 5, pid
            st.pid_start = tl.process_start_time(pid) if pid == proc.pid else 12345
            write_status_file(j.job_dir, st.to_dict())
        # a real orphan is not our child; reap this one at once so it does not linger as a zombie
        threading.Thread(target=proc.wait, daemon=True).start()
        fixed = reconcile(str(jobs))
        assert sorted(fixed) == ["orphan", "stale"]
        proc.wait(15)
        orphan, stale = read_status_file(orphan_job.job_dir), read_status_file(stale_job.job_dir)
        assert orphan["state"] == stale["state"] == "stopped" and orphan["step"] == 5
        assert "restarted" in orphan["error"] and "stopped while" in stale["error"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ read-back of the job's files
def test_forged_job_json_is_refused_and_nothing_runs(rig, tmp_path):
    sd_root, make, jobs, models = rig
    job = make(name="real", overrides={"max_train_steps": 4, "save_every_n_steps": 2})
    launch(job)
    sentinel = tmp_path / "SENTINEL"
    evil = jobs / "evil"
    (evil / "out" / "evil-step00000002-state").mkdir(parents=True)
    (evil / "out" / "evil-step00000002-state" / "train_state.json").write_text('{"current_step": 2}')
    (evil / "job.json").write_text(json.dumps({"job_id": "evil", "argv": ["/bin/sh", "-c", f"touch {sentinel}"],
                                               "preset": "sdxl_realistic"}))
    kw = dict(loras_root=str(models / "loras"), python=sys.executable, sd_root=sd_root, model_roots=[str(models)])
    with pytest.raises(store.StoreError, match="not written by Continuity"):
        load_job(str(evil), **kw)
    # a real job's file copied under another name, or edited, is refused too
    (jobs / "copy").mkdir()
    (jobs / "copy" / "job.json").write_bytes((Path(job.job_dir) / "job.json").read_bytes())
    with pytest.raises(store.StoreError):
        load_job(str(jobs / "copy"), **kw)
    doc = json.loads((Path(job.job_dir) / "job.json").read_text())
    doc["models"]["pretrained_model_name_or_path"] = "/etc/passwd"
    (jobs / "edited").mkdir()
    (jobs / "edited" / "job.json").write_text(json.dumps(doc))
    with pytest.raises(store.StoreError):
        load_job(str(jobs / "edited"), **kw)
    assert not sentinel.exists()


def test_a_saved_state_changed_after_training_is_not_resumed(rig):
    sd_root, make, _, _ = rig
    job = make(name="tamper", overrides={"max_train_steps": 6, "save_every_n_steps": 2})
    _fake_trainer.set_control(sd_root, {"fail_at_step": 5})
    with pytest.raises(TrainingFailed):
        launch(job)
    state = Path(find_states(job)[-1])
    runs = len(_fake_trainer.invocations(sd_root))
    (state / "random_states_0.pkl").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")   # a forged pickle
    with pytest.raises(ContinuityError, match="changed after training wrote it"):
        launch(job, resume=True)
    (state / "random_states_0.pkl").unlink()
    (state / "extra.bin").write_bytes(b"x")
    with pytest.raises(ContinuityError, match="changed after training wrote it"):
        launch(job, resume=True)
    # a state folder no run of this job recorded is not offered at all
    (Path(job.output_dir) / "tamper-step00000004-state").rename(Path(job.output_dir) / "tamper-step00000008-state")
    assert all("00000008" not in s for s in find_states(job))
    assert len(_fake_trainer.invocations(sd_root)) == runs, "nothing was started"


@pytest.mark.parametrize("content", [
    b"not json", b"[1, 2]", b"{}", b"[" * 100_000, b'{"job_id": "st", "state": "running", "step": "x"}',
    b'{"state": "running", "signature": "v1:00"}',
])
def test_malformed_status_json_gives_a_clear_error(rig, content):
    _, make, _, _ = rig
    job = make(name="st")
    Path(job.job_dir, "status.json").write_bytes(content)
    with pytest.raises(ContinuityError) as err:
        read_status_file(job.job_dir)
    assert "status.json" in str(err.value) and job.job_dir not in str(err.value)


def test_signed_status_with_a_wrong_shape_is_refused(rig):
    _, make, _, _ = rig
    job = make(name="shape")
    for bad in ({"job_id": "shape", "state": "running", "step": -1}, {"job_id": "shape", "state": "odd", "step": 1},
                {"job_id": "shape", "state": "running", "step": 1, "losses": [[1, "x"]]},
                {"job_id": "shape", "state": "running", "step": 1, "extra": 1}, {"job_id": "other", "state": "running",
                                                                                   "step": 1}):
        write_status_file(job.job_dir, bad)
        with pytest.raises(ContinuityError):
            read_status_file(job.job_dir)


# ------------------------------------------------------------------ text and names
def test_toml_is_valid_for_any_unicode_and_lone_surrogates_are_refused(rig):
    _, make, _, _ = rig
    job = make(name="uni", overrides={"max_train_steps": 2})
    text = (Path(job.job_dir) / "dataset.toml").read_text(encoding="utf-8")
    assert "\\ud83d" not in text
    rng = np.random.default_rng(0)
    job2 = create_job(jobs_root=str(Path(job.job_dir).parent), loras_root=str(Path(job.lora_dir).parent),
                      job_name="uni2", preset=load_preset("sdxl_realistic"), overrides={}, python="py",
                      sd_scripts_root=job.sd_root, models=job.models, model_roots=job.model_roots,
                      images=[rng.random((64, 64, 3))], token="ohwx", class_phrase="🐱 cat \"q\" \\ é")
    cfg = tomllib.loads((Path(job2.job_dir) / "dataset.toml").read_text(encoding="utf-8"))
    assert cfg["datasets"][0]["subsets"][0]["class_tokens"] == "ohwx 🐱 cat \"q\" \\ é"
    with pytest.raises(ContinuityError) as err:
        create_job(
            jobs_root=str(Path(job.job_dir).parent), loras_root=str(Path(job.lora_dir).parent), job_name="sur",
            preset=load_preset("sdxl_realistic"), overrides={}, python="py", sd_scripts_root=job.sd_root,
            models=job.models, model_roots=job.model_roots, images=[rng.random((64, 64, 3))], token="ohwx",
            class_phrase="cat \ud800")
    assert err.value.input == "class_phrase"


def test_a_job_name_taken_meanwhile_gets_its_own_folder(rig, monkeypatch):
    _, make, jobs, _ = rig
    real_rename = os.rename
    calls = []

    def racing_rename(src, dst):
        if not calls:      # another server created the same job just before us (ENOTEMPTY on rename)
            os.makedirs(os.path.join(dst, "img"))
        calls.append(dst)
        return real_rename(src, dst)
    monkeypatch.setattr(tl.os, "rename", racing_rename)
    job = make(name="race")
    assert job.job_id == "race-2" and os.path.basename(calls[-1]) == "race-2"
    assert os.listdir(jobs / "race") == ["img"], "the other writer's folder is left as it was"
    doc = json.loads((Path(job.job_dir) / "job.json").read_text())
    assert doc["job_id"] == "race-2" and str(jobs / "race-2" / "img") in (Path(job.job_dir) / "dataset.toml").read_text()
    assert treg.read_status_file(job.job_dir) is None


def test_resume_of_a_resumed_run_continues_from_its_own_state(rig):
    sd_root, make, _, _ = rig
    job = make(name="chain", overrides={"max_train_steps": 12, "save_every_n_steps": 3})
    reg = JobRegistry()
    for hang, stop_at in ((5, 4), (8, 7)):
        _fake_trainer.set_control(sd_root, {"hang_at_step": hang})
        reg.start(job, resume=hang != 5, mode="background", grace=(2, 2))
        assert _wait_for(lambda s=stop_at: reg.status("chain")["step"] == s)
        reg.cancel("chain")
        assert reg.wait("chain", 30)["state"] == "cancelled"
    names = [os.path.relpath(s, job.output_dir) for s in find_states(job)]
    assert names == ["chain-step00000003-state", "resume-1/chain-step00000006-state"]
    _fake_trainer.set_control(sd_root, {})
    events = []
    reg.start(job, resume=True, mode="background", listener=events.append)
    final = reg.wait("chain", 60)
    assert final["state"] == "finished" and final["step"] == final["total"] == 12
    steps = [e.step for e in events if e.kind == "step"]
    assert steps[0] == 6 and steps[-1] == 12
    assert [p[0] for p in final["losses"]] == list(range(1, 13))
    assert os.path.isfile(job.lora_path)


def test_resume_from_a_state_at_the_last_step_is_refused_up_front(rig):
    sd_root, make, _, _ = rig
    job = make(name="lastone", overrides={"max_train_steps": 4, "save_every_n_steps": 2})
    _fake_trainer.set_control(sd_root, {"no_output_file": True})     # the run died before the final save
    with pytest.raises(TrainingFailed):
        launch(job)
    runs = len(_fake_trainer.invocations(sd_root))
    with pytest.raises(ContinuityError, match="nothing left to train"):
        launch(job, resume=True)
    assert len(_fake_trainer.invocations(sd_root)) == runs


def test_private_copies_of_gone_servers_are_cleaned(rig):
    from continuity.training import clean_private_runs, records
    runs = Path(records.private_dir()) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    gone, mine = runs / "999999-job-abc", runs / f"{os.getpid()}-job-def"
    gone.mkdir()
    mine.mkdir()
    (gone / "optimizer.bin").write_bytes(b"x")
    removed = clean_private_runs()
    assert "999999-job-abc" in removed and not gone.exists() and mine.is_dir()
    mine.rmdir()


def test_only_the_training_bar_is_progress():
    from continuity.training.progress import parse_line
    assert parse_line("steps:  10%|█         | 1/10 [00:01<00:09,  1.00it/s, avr_loss=0.15]").step == 1
    for other in ("validation steps:  50%|█████     | 2/4 [00:01<00:01,  2.00it/s, val_avg_loss=0.2]",
                  "epoch validation steps: 100%|██████████| 4/4 [00:02<00:00,  2.00it/s]",
                  "100%|██████████| 20/20 [00:05<00:00,  3.90it/s]"):
        assert parse_line(other) is None
