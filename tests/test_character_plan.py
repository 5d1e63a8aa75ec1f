"""Training plans (core): parsing, subsets, stage chaining, failure handling, recording."""
import os

import numpy as np
import pytest
from PIL import Image

from continuity import character as charlib
from continuity.character import plan as planlib
from continuity.errors import ContinuityError


def _dataset(root, layout):
    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        d = os.path.join(root, folder) if folder != "." else root
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(os.path.join(d, f"{i}.png"))
            with open(os.path.join(d, f"{i}.txt"), "w") as fh:
                fh.write(f"{folder} {i}")
    return root


def test_parse_presets_and_errors():
    p = planlib.parse_plan("three_stage")
    assert [s.name for s in p.stages] == ["appearance", "details", "expressions"]
    assert p.stages[1].repeats == 3
    p = planlib.parse_plan('[{"name": "a"}, {"name": "b", "subsets": "closeup", "repeats": 2}]')
    assert p.stages[1].subsets == ["closeup"]
    for bad, msg in [("nope", "preset"), ('{"stages": []}', "non-empty"), ('[{"name": "a", "lr": 1}]', "unknown keys"),
                     ('[{"name": "a"}, {"name": "a"}]', "used twice"), ('[{"subsets": ["../x"]}]', "inside the dataset"),
                     ('[{"repeats": 0}]', "repeats"), ('[{"refine": true}]', "first stage cannot refine"),
                     ('[{"name": "a b"}]', "letters")]:
        with pytest.raises(ContinuityError, match=msg):
            planlib.parse_plan(bad)


def test_select_subset(tmp_path):
    d = _dataset(str(tmp_path), {".": 1, "closeup": 2, "portrait": 3, "expressions/happy": 2})
    assert len(planlib.select_subset(d, ["*"])) == 8
    assert [it.rel for it in planlib.select_subset(d, ["closeup"])] == ["closeup/0.png", "closeup/1.png"]
    assert planlib.select_subset(d, ["closeup"])[1].caption == "closeup 1"
    assert len(planlib.select_subset(d, ["expression*"])) == 2
    assert [it.rel for it in planlib.select_subset(d, ["."])] == ["0.png"]
    assert planlib.select_subset(d, ["full_body"]) == []


class FakeLauncher:
    """Records jobs; 'fails' names the stage that fails."""

    def __init__(self, root, fails=None):
        self.root, self.fails, self.jobs = root, fails, []

    def make_job(self, stage, index, items, weights, dataset_dir):
        job = {"job_id": f"job{index}", "stage": stage.name, "weights": weights, "n": len(items),
               "repeats": stage.repeats}
        self.jobs.append(job)
        return type("Job", (), job)

    def launch(self, job):
        if job.stage == self.fails:
            raise ContinuityError("sd-scripts exited with code 1")
        path = os.path.join(self.root, f"{job.job_id}.safetensors")
        with open(path, "wb") as fh:
            fh.write(b"lora")
        return path


def test_three_stages_chain_weights_and_record(tmp_path):
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2, "portrait": 2, "expressions": 1, "poses": 1})
    root = str(tmp_path / "chars")
    charlib.save_profile(root, "kay", trigger_word="ky", references=[np.zeros((8, 8, 3), np.float32)])
    fake = FakeLauncher(str(tmp_path))
    plan = planlib.parse_plan("three_stage")

    def done(res):
        return charlib.record_lora(root, "kay", lora_name=os.path.basename(res.lora_path), path=res.lora_path,
                                   stage=res.index, report=res.report).revision

    results = planlib.run_plan(plan, dataset_dir=d, make_job=fake.make_job, launch=fake.launch,
                               evaluate=lambda st, lora: {"mean": 0.5 + 0.1 * len(st.name) / 10},
                               on_stage_done=done)
    assert [j["stage"] for j in fake.jobs] == ["appearance", "details", "expressions"]
    assert [j["n"] for j in fake.jobs] == [6, 2, 2]
    assert fake.jobs[0]["weights"] is None
    assert fake.jobs[1]["weights"] == results[0].lora_path
    assert fake.jobs[2]["weights"] == results[1].lora_path
    assert [r.revision for r in results] == [2, 3, 4]
    char = charlib.load_profile(root, "kay")
    assert [l["stage"] for l in char.loras] == [1, 2, 3]
    assert char.latest_lora()["name"] == "job3.safetensors"
    text = planlib.format_report(plan, results)
    assert "3/3 stages done" in text and "from job1.safetensors" in text and "vs previous stage" in text


def test_failure_in_stage_two_keeps_stage_one(tmp_path):
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2, "expressions": 1})
    fake = FakeLauncher(str(tmp_path), fails="details")
    recorded = []
    with pytest.raises(planlib.PlanFailed) as ei:
        planlib.run_plan(planlib.parse_plan("three_stage"), dataset_dir=d, make_job=fake.make_job,
                         launch=fake.launch, on_stage_done=lambda r: recorded.append(r) or 7)
    msg = str(ei.value)
    assert "stage 2 of 3 ('details') failed" in msg and "exited with code 1" in msg
    assert "Kept: stage 1 ('appearance') LoRA job1.safetensors" in msg
    assert [r.name for r in ei.value.results] == ["appearance"]
    assert [r.name for r in recorded] == ["appearance"]
    assert [j["stage"] for j in fake.jobs] == ["appearance", "details"]   # stage 3 never started


def test_empty_subset_refused_before_any_job(tmp_path):
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2})
    fake = FakeLauncher(str(tmp_path))
    with pytest.raises(ContinuityError, match=r"stage 3 \('expressions'\) selects no image.*closeup"):
        planlib.run_plan(planlib.parse_plan("three_stage"), dataset_dir=d, make_job=fake.make_job, launch=fake.launch)
    assert fake.jobs == []


def test_refine_stage_trains_on_new_version(tmp_path):
    d = _dataset(str(tmp_path / "v1"), {"closeup": 2})
    d2 = _dataset(str(tmp_path / "v2"), {"closeup": 3})
    fake = FakeLauncher(str(tmp_path))
    seen = []

    def refine(stage, prev, current):
        seen.append((stage.name, os.path.basename(prev.lora_path), current))
        return d2
    res = planlib.run_plan(planlib.parse_plan("two_step"), dataset_dir=d, make_job=fake.make_job,
                           launch=fake.launch, refine=refine)
    assert seen == [("second", "job1.safetensors", d)]
    assert res[1].dataset_dir == d2 and res[1].images == 3 and fake.jobs[1]["weights"] == res[0].lora_path


def _fake_sd(tmp_path):
    from fake_sdscripts import _fake_trainer
    dest = _fake_trainer.install(str(tmp_path / "sd-scripts"))
    return _fake_trainer, dest


def _launcher(tmp_path, char, sd_root, fake, fail_stage=None):
    import sys

    from continuity import training
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True, exist_ok=True)
    (models / "base.safetensors").write_bytes(b"x")
    make_job, launch = planlib.launcher_steps(
        character=char, preset=training.load_preset("sdxl_realistic"), sd_python=sys.executable, sd_root=sd_root,
        jobs_root=str(tmp_path / "jobs"), loras_root=str(tmp_path / "loras"),
        models={"pretrained_model_name_or_path": str(models / "base.safetensors")},
        model_roots=[str(tmp_path / "models")], base_overrides={"max_train_epochs": 1})

    def make(stage, index, items, weights, dataset_dir):
        fake.set_control(sd_root, {"fail_at_step": 1} if stage.name == fail_stage else {})
        return make_job(stage, index, items, weights, dataset_dir)
    return make, launch


def test_three_stage_plan_on_fake_sd_scripts(tmp_path):
    fake, sd_root = _fake_sd(tmp_path)
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2, "portrait": 1, "expressions": 1, "poses": 1})
    root = str(tmp_path / "chars")
    char = charlib.save_profile(root, "lena", trigger_word="l3na", class_phrase="woman",
                                references=[np.zeros((8, 8, 3), np.float32)])
    make, launch = _launcher(tmp_path, char, sd_root, fake)
    results = planlib.run_plan(
        planlib.parse_plan("three_stage"), dataset_dir=d, make_job=make, launch=launch,
        on_stage_done=lambda r: charlib.record_lora(root, "lena", lora_name=os.path.basename(r.lora_path),
                                                    path=r.lora_path, stage=r.index).revision)
    calls = fake.invocations(sd_root)
    assert len(calls) == 3
    # jobs in order, each continuing from the previous stage's LoRA
    assert "--network_weights" not in calls[0]["argv"]
    for i in (1, 2):
        argv = calls[i]["argv"]
        assert argv[argv.index("--network_weights") + 1] == os.path.realpath(results[i - 1].lora_path)
    assert all(os.path.isfile(r.lora_path) for r in results)
    # stage 2 trained the close-ups with 3 repeats
    toml = open(os.path.join(tmp_path, "jobs", results[1].job, "dataset.toml")).read()
    assert "num_repeats = 3" in toml
    assert results[1].images == 2 and results[2].images == 2
    assert [l["stage"] for l in charlib.load_profile(root, "lena").loras] == [1, 2, 3]


def test_fake_sd_scripts_failure_in_stage_two(tmp_path):
    fake, sd_root = _fake_sd(tmp_path)
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2, "expressions": 1})
    root = str(tmp_path / "chars")
    char = charlib.save_profile(root, "olga", trigger_word="0lga", class_phrase="woman",
                                references=[np.zeros((8, 8, 3), np.float32)])
    make, launch = _launcher(tmp_path, char, sd_root, fake, fail_stage="details")
    with pytest.raises(planlib.PlanFailed) as ei:
        planlib.run_plan(planlib.parse_plan("three_stage"), dataset_dir=d, make_job=make, launch=launch,
                         on_stage_done=lambda r: charlib.record_lora(root, "olga", lora_name=os.path.basename(r.lora_path),
                                                                     path=r.lora_path, stage=r.index).revision)
    msg = str(ei.value)
    assert "stage 2 of 3 ('details') failed" in msg and "exited with code 1" in msg and "out of memory" in msg
    assert "Kept: stage 1 ('appearance')" in msg
    assert len(fake.invocations(sd_root)) == 2
    kept = charlib.load_profile(root, "olga").loras
    assert len(kept) == 1 and kept[0]["stage"] == 1 and os.path.isfile(kept[0]["path"])


def test_evaluation_error_keeps_the_stage(tmp_path):
    d = _dataset(str(tmp_path / "ds"), {"closeup": 1})
    fake = FakeLauncher(str(tmp_path))

    def evaluate(stage, lora):
        raise ContinuityError("no face found in reference image #0")
    res = planlib.run_plan(planlib.parse_plan("single"), dataset_dir=d, make_job=fake.make_job, launch=fake.launch,
                           evaluate=evaluate)
    assert len(res) == 1 and os.path.isfile(res[0].lora_path)
    assert "consistency report failed: no face found" in res[0].report["error"]
