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
                     ('[{"name": "a b"}]', "letters"), ("[" * 100_000 + "]" * 100_000, "nested"),
                     ('{"stages": [1e999]}', "JSON")]:
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


def test_select_subset_refuses_links_out_of_the_dataset(tmp_path):
    d = _dataset(str(tmp_path / "ds"), {".": 1, "closeup": 1})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    os.symlink(outside / "secret.png", os.path.join(d, "closeup", "9.png"))
    with pytest.raises(ContinuityError, match="outside the allowed folders") as err:
        planlib.select_subset(d, ["closeup"])
    assert err.value.input == "dataset" and str(tmp_path) not in str(err.value)
    os.unlink(os.path.join(d, "closeup", "9.png"))
    os.symlink(outside, os.path.join(d, "portrait"), target_is_directory=True)
    with pytest.raises(ContinuityError, match="outside"):
        planlib.select_subset(d, ["*"])


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
        return d2, {"generated": 4, "below_threshold": 2, "fixed": 1, "no_face": 1, "kept": 1, "threshold": 0.9,
                    "dataset_version": 2, "subfolder": "refine", "previous_images": 2}
    means = iter([0.61, 0.66])
    res = planlib.run_plan(planlib.parse_plan("two_step"), dataset_dir=d, make_job=fake.make_job,
                           launch=fake.launch, refine=refine,
                           evaluate=lambda st, lora: {"mean": next(means), "count": 4, "passing": 1, "faces_missing": 0})
    assert seen == [("second", "job1.safetensors", d)]
    assert res[1].dataset_dir == d2 and res[1].images == 3 and fake.jobs[1]["weights"] == res[0].lora_path
    assert res[0].refine == {} and res[1].refine["kept"] == 1
    text = planlib.format_report(planlib.parse_plan("two_step"), res)
    assert "refine: 4 test images with stage 1's LoRA, 2 below the threshold 0.900, 1 fixed" in text
    assert "1 kept -> dataset v2 (refine/, the previous version's 2 images as they were)" in text
    assert "consistency before (stage 1's LoRA): mean 0.610, passing 1/4; after: mean 0.660, passing 1/4" in text
    assert "(+0.050 vs previous stage)" in text


def test_select_refined_rules():
    R = planlib.RefineImage
    ims = [R(0, 0, "closeup", "p", faces=0),                                             # no face
           R(1, 1, "portrait", "p", faces=1, before=0.95),                               # passes as generated
           R(2, 2, "closeup", "p", faces=1, before=0.85, fix_score=0.94, fix_note="kept"),  # fixed into passing
           R(3, 3, "closeup", "p", faces=1, before=0.85, fix_score=0.80, fix_note="x"),  # fix lowered the score
           R(4, 4, "closeup", "p", faces=2, before=0.80, fix_score=0.88, fix_note="x"),  # fix helped, not enough
           R(5, 5, "closeup", "p", faces=1, before=0.70, fix_note="the face detector found no face to fix"),
           R(6, 6, "closeup", "p", faces=1, before=0.85, fix_score=0.85, fix_note="x")]  # not lower: kept (keep_fix)
    assert [planlib.needs_fix(im, 0.93) for im in ims] == [False, False, True, True, True, True, True]
    planlib.select_refined(ims, 0.93)
    assert [im.kept for im in ims] == [False, True, True, False, False, False, False]
    assert [im.fixed for im in ims] == [False, False, True, False, True, False, True]
    assert [im.score for im in ims] == [None, 0.95, 0.94, 0.85, 0.88, 0.70, 0.85]
    assert ims[0].reason == "no face found"
    assert ims[1].reason == "identity 0.950 >= threshold 0.930"
    assert ims[2].reason == "fixed: identity 0.850 -> 0.940 >= threshold 0.930"
    assert ims[3].reason == "identity 0.850 < threshold 0.930 (fix scored 0.800, not kept)"
    assert ims[4].reason == "identity 0.800 < threshold 0.930 (after the fix 0.880)"
    assert ims[5].reason == "identity 0.700 < threshold 0.930 (the face detector found no face to fix)"
    s = planlib.refine_summary(ims, version=3, folder="/x/v3", subfolder="refine", previous="/x/v2",
                               previous_images=5, threshold=0.93, model="dlib")
    assert (s["generated"], s["no_face"], s["below_threshold"], s["fixed"], s["kept"]) == (7, 1, 5, 3, 2)
    planlib.select_refined(ims, None)          # no threshold: every image with a face
    assert [im.kept for im in ims] == [False, True, True, True, True, True, True]


def test_refine_captions_follow_the_dataset(tmp_path):
    plain = tmp_path / "plain"
    _dataset(str(plain), {"closeup": 2})                      # captions "closeup 0": no trigger word
    assert planlib.captions_carry_trigger(str(plain), "r3na") == (False, "")
    assert planlib.refine_caption("portrait, upper body", trigger="r3na", class_phrase="woman",
                                  carry_trigger=False) == "portrait, upper body"
    modular = tmp_path / "modular"
    _dataset(str(modular), {"closeup": 3})
    for i, text in enumerate(["photo of r3na woman, red hair, close-up", "photo of r3na woman, close-up", "close-up"]):
        (modular / "closeup" / f"{i}.txt").write_text(text)
    carry, example = planlib.captions_carry_trigger(str(modular), "R3NA")
    assert carry and example.startswith("photo of r3na")
    assert planlib.refine_caption("portrait, upper body", trigger="r3na", class_phrase="woman", carry_trigger=True,
                                  example=example) == "photo of r3na woman, portrait, upper body"


def _tree(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_mtime_ns, open(p, "rb").read())
    return out


def test_write_refined_version_with_real_faces(tmp_path, faces_dir):
    """Real photos scored with dlib: the same person passes, someone else and a faceless image do not;
    the new version (the one dataset-version format) holds the previous images as they were plus
    refine/ with the kept image, and its manifest the provenance of every test image."""

    from continuity.faces import embedders
    from continuity.scoring import score_set

    def photo(name, side=256):
        im = Image.open(faces_dir / name).convert("RGB")
        im.thumbnail((side, side))
        return np.asarray(im, np.float32) / 255

    prev = tmp_path / "chars" / "kay" / "datasets" / "v1"
    _dataset(str(prev), {"closeup": 2, ".": 1})
    (prev / "closeup" / "0.txt").write_text("photo of k4y man, close-up")
    (prev / "closeup" / "1.txt").write_text("photo of k4y man, smiling, close-up")
    before = _tree(str(prev))
    refs = [photo("img1.jpg"), photo("img2.jpg")]
    cands = [photo("img4.jpg"), photo("img13.jpg"), np.random.default_rng(3).random((96, 96, 3)).astype(np.float32)]
    emb = embedders.get_embedder("dlib")
    ms = score_set(refs, cands, [emb]).models["dlib"]
    thr = emb.threshold
    layers = ["closeup", "closeup_portrait", "portrait"]
    ims = [planlib.RefineImage(i, i, layers[i], f"k4y man, {layers[i]}", faces=c.n_faces, before=m)
           for i, (c, m) in enumerate(zip(ms.candidates, ms.mean))]
    assert [planlib.needs_fix(im, thr) for im in ims] == [False, True, False]
    ims[1].fix_score, ims[1].fix_note = ims[1].before - 0.02, "fix scored lower; discarded"
    planlib.select_refined(ims, thr)
    assert [im.kept for im in ims] == [True, False, False]
    carry, example = planlib.captions_carry_trigger(str(prev), "k4y")
    assert carry
    from continuity.character import growth
    for im in ims:
        im.caption = planlib.refine_caption(growth.LAYER_PROMPT[im.layer], trigger="k4y", class_phrase="man",
                                            carry_trigger=True, example=example)
    from continuity.dataset import versions as vs
    root = str(tmp_path / "datasets")
    version, folder, sub = planlib.write_refined_version(root, "kay", str(prev), ims, cands,
                                                         provenance={"lora": "s1.safetensors"})
    assert (version, sub) == (1, "refine") and folder == os.path.realpath(os.path.join(root, "kay", "v1"))
    assert _tree(str(prev)) == before                           # the previous dataset is untouched
    new = _tree(folder)
    for rel, (_, data) in before.items():                       # carried over: the images as they were
        assert new[rel][1] == data if rel.endswith(".png") else new[rel][1].decode().strip() == data.decode().strip()
    assert sorted(new) == sorted([*before, "refine/closeup_0000.png", "refine/closeup_0000.txt", "manifest.json"])
    assert new["refine/closeup_0000.txt"][1].decode().strip() == "photo of k4y man, close-up of the face"
    kept_img = np.asarray(Image.open(os.path.join(folder, "refine", "closeup_0000.png")), np.float32) / 255
    assert np.abs(kept_img - cands[0]).max() <= 1 / 255 + 1e-6
    ver = vs.load_version(root, "kay", 1)                        # the one format: read back through the store
    prov = ver.provenance
    assert prov["lora"] == "s1.safetensors" and prov["previous_version"] == "v1" and prov["step"] == "refine"
    assert [p["kept"] for p in prov["images"]] == [True, False, False]
    assert prov["images"][0]["file"] == "refine/closeup_0000.png" and prov["images"][1]["file"] == ""
    assert "fix scored" in prov["images"][1]["reason"] and prov["images"][2]["reason"] == "no face found"
    assert len(vs.read_items(ver)) == len([r for r in before if r.endswith(".png")]) + 1
    # refining the refined version again: its next version with refine_2 beside refine; the first untouched
    v2, folder2, sub2 = planlib.write_refined_version(root, "kay", folder, ims, cands, provenance={})
    assert (v2, sub2) == (2, "refine_2") and vs.load_version(root, "kay", 2).manifest["parent"] == "v1"
    assert os.path.isfile(os.path.join(folder2, "refine", "closeup_0000.png"))
    assert os.path.isfile(os.path.join(folder2, "refine_2", "closeup_0000.png"))
    assert _tree(folder) == new and _tree(str(prev)) == before


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


class _Cancelled(Exception):
    """Stands for the host's 'user pressed Cancel' exception (ComfyUI's InterruptProcessingException)."""


@pytest.mark.parametrize("where", ["report", "training", "refine"])
def test_cancel_stops_the_plan_and_keeps_what_was_trained(tmp_path, where):
    d = _dataset(str(tmp_path / "ds"), {"closeup": 2, "expressions": 1})
    fake = FakeLauncher(str(tmp_path))
    recorded = []
    plan = planlib.parse_plan('{"stages": [{"name": "first", "subsets": ["*"]}, '
                              '{"name": "second", "subsets": ["*"], "refine": true}, {"name": "third", "subsets": ["*"]}]}')
    launch = fake.launch

    def evaluate(stage, lora):
        if where == "report" and stage.name == "first":
            raise _Cancelled()
        return {"mean": 0.5}

    def refine(stage, prev, ds):
        if where == "refine":
            raise _Cancelled()
        return ds

    def launching(job):
        if where == "training" and job.stage == "second":
            raise _Cancelled()
        return launch(job)

    with pytest.raises(_Cancelled):        # as it is: not a failed stage, not a failed report
        planlib.run_plan(plan, dataset_dir=d, make_job=fake.make_job, launch=launching, evaluate=evaluate,
                         refine=refine, on_stage_done=lambda r: recorded.append(r) or 1, passthrough=(_Cancelled,))
    # the first stage's LoRA is recorded in every case (its report says it was cancelled when it was)
    assert [r.name for r in recorded] == ["first"]
    if where == "report":
        assert recorded[0].report == {"error": "the consistency report was cancelled"}
        assert [j["stage"] for j in fake.jobs] == ["first"]
    else:
        assert recorded[0].report == {"mean": 0.5}
    assert "third" not in [j["stage"] for j in fake.jobs]
