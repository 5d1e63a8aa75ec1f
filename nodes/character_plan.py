"""Character Training Plan: multi-stage training with per-stage consistency reports and the 2-step
refine loop (V3 adapter; the test images, scores, face fix and refine step are the core's,
``continuity.character.refine``, given ComfyUI's sampling as callables)."""
from __future__ import annotations

import os

import numpy as np
from comfy_api.latest import io

from ..continuity import character as charlib
from ..continuity.character import refine as refinelib
from ..continuity.errors import ContinuityError
from ..continuity.fix import FixSettings
from . import _common, _glue
from ._types import CATEGORY, Character, FaceModel
from .training import jobs_root as training_jobs_root


class _TestImageMaker:
    """Test images with a LoRA on ComfyUI's sampler (prompt i, seed i; see ``refinelib.make_test_images``)."""

    def __init__(self, char, model, clip, vae, lora_path: str, side: int, steps: int):
        self.char, self.vae, self.lora_path, self.side, self.steps = char, vae, lora_path, side, steps
        self.model, self.clip = _glue.apply_lora(model, clip, lora_path, 1.0)   # the file is read once
        self._neg = None

    @property
    def negative(self):
        if self._neg is None:
            self._neg = _glue.encode_text(self.clip, refinelib.TEST_NEGATIVE)
        return self._neg

    def generate(self, seed: int, prompt: str) -> np.ndarray:
        import nodes as comfy_nodes
        _glue.throw_if_interrupted()
        latent = comfy_nodes.EmptyLatentImage().generate(self.side, self.side, 1)[0]
        out = comfy_nodes.common_ksampler(self.model, seed, self.steps, refinelib.TEST_CFG, refinelib.TEST_SAMPLER,
                                          refinelib.TEST_SCHEDULER, _glue.encode_text(self.clip, prompt),
                                          self.negative, latent)[0]
        return _glue.decode(self.vae, out["samples"])[0].numpy()

    def images(self, n: int, cache: dict | None) -> refinelib.TestImages:
        key = (os.path.realpath(self.lora_path), self.side, self.steps)
        return refinelib.make_test_images(self.char, n, self.generate, cache=cache, key=key)


def evaluate_lora(char, model, clip, vae, lora_path: str, n: int, side: int, steps: int, face_model=None,
                  cache: dict | None = None) -> dict:
    """The consistency report of one LoRA: ``n`` test images (prompts over the framing ladder, seeds 0..n-1)
    generated with it and scored against the character's references."""
    tests = _TestImageMaker(char, model, clip, vae, lora_path, side, steps).images(n, cache)
    det, emb = _glue.identity_backend(face_model)
    scores = refinelib.score_images(char, tests.images, detector=det, embedder=emb)
    thr = char.threshold(getattr(emb, "name", None), float(getattr(emb, "threshold", 0.0)))
    return refinelib.consistency_report(scores, threshold=thr, model=getattr(emb, "name", ""), prompts=tests.prompts)


def refine_dataset(char, model, clip, vae, *, lora_path: str, dataset_dir: str, n: int, side: int, steps: int,
                   face_model=None, cache: dict | None = None, plan_name: str = "", stage_name: str = "",
                   denoise_1: float = refinelib.REFINE_DENOISE_1,
                   denoise_2: float = refinelib.REFINE_DENOISE_2) -> tuple[str, dict]:
    """The refine step of the 2-step loop, before a stage marked ``"refine": true``
    (``refinelib.refine_step``): ``n`` test images with the previous stage's LoRA, the faces of those
    below the threshold fixed by the face fix (as Face Fix: region mask, two passes at ``denoise_1`` /
    ``denoise_2``, a crop the size of the test images), the fix kept where the identity does not drop,
    the images that reach the threshold in ``refine/`` of a new dataset version. Returns (folder, summary)."""
    maker = _TestImageMaker(char, model, clip, vae, lora_path, side, steps)
    tests = maker.images(n, cache)
    det, emb = _glue.identity_backend(face_model)
    model_name = getattr(emb, "name", "")
    thr = char.threshold(model_name or None, float(getattr(emb, "threshold", 0.0)))
    size = max(64, min(1024, side // 64 * 64))
    settings = FixSettings(target_size=size)

    def fix(indices, images, scores):
        conds = {p: _glue.encode_text(maker.clip, p) for p in {tests.prompts[i] for i in indices}}
        inpaint = _glue.two_pass_inpainter(
            maker.model, None, maker.negative, vae, seed=0, steps=steps, cfg=refinelib.TEST_CFG,
            sampler_name=refinelib.TEST_SAMPLER, scheduler=refinelib.TEST_SCHEDULER, denoise_1=denoise_1,
            denoise_2=denoise_2, seeds=list(indices), positives=[conds[tests.prompts[i]] for i in indices])
        return refinelib.fix_largest_faces(char, images, scores, detector=det, embedder=emb,
                                           parser=_glue.face_parser(face_model), inpaint=inpaint, settings=settings,
                                           interrupted=_glue.throw_if_interrupted)

    provenance = {"character": char.name, "revision": char.revision, "plan": plan_name, "stage": stage_name,
                  "lora": lora_path, "model": model_name, "threshold": thr, "side": side, "steps": steps,
                  "cfg": refinelib.TEST_CFG, "sampler": refinelib.TEST_SAMPLER, "scheduler": refinelib.TEST_SCHEDULER,
                  "negative": refinelib.TEST_NEGATIVE,
                  "fix": {"regions": settings.regions, "denoise_1": denoise_1, "denoise_2": denoise_2, "size": size,
                          "kept_if": "the face's identity does not drop"}}
    return refinelib.refine_step(
        char, tests, scores=refinelib.score_images(char, tests.images, detector=det, embedder=emb), threshold=thr,
        model_name=model_name, fix=fix, dataset_dir=dataset_dir, datasets_root=_common.datasets_root(),
        provenance=provenance,
        note=f"refine before stage '{stage_name}'",
        extra={"step": "refine", "plan": plan_name, "stage": stage_name, "lora": lora_path})


def _dataset_dir(char, dataset_path: str) -> str:
    """The dataset folder to train on: ``dataset_path`` (confined), else the profile's latest version."""
    if dataset_path and dataset_path.strip():
        return _common.confine_dataset(dataset_path.strip())
    latest = char.latest_dataset()
    if not latest:
        raise ContinuityError(f"the profile '{char.name}' has no dataset version yet: give dataset_path "
                              "or grow a layer first", input="dataset_path")
    return _common.confine_dataset(str(latest["path"]))


def _preset_and_checkpoint(training_preset: str, checkpoint: str):
    """(the training preset, the checkpoint's full path); plans train presets with one checkpoint."""
    import folder_paths

    from ..continuity import training
    preset = training.load_preset(training_preset)
    ckpt = folder_paths.get_full_path("checkpoints", checkpoint) if checkpoint else None
    if ckpt is None:
        raise ContinuityError(f"'{checkpoint}' is not in ComfyUI's checkpoints folder "
                              f"({', '.join(folder_paths.get_folder_paths('checkpoints'))})", input="checkpoint")
    slots = list(getattr(preset, "models", {}) or {"pretrained_model_name_or_path": {}})
    if slots != ["pretrained_model_name_or_path"]:
        raise ContinuityError(f"preset '{training_preset}' needs the model files {', '.join(slots)}; plans support "
                              "presets with one checkpoint (use the training node for the others)",
                              input="training_preset")
    return preset, ckpt


def _training_presets() -> list[str]:
    try:
        from ..continuity.training import list_presets
        return list_presets() or ["(no presets)"]
    except Exception:  # the training module is optional for this node's schema
        return ["(no presets)"]


class CharacterTrainingPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..continuity.character import plan as planlib
        return io.Schema(
            node_id="ContinuityCharacterTrainingPlan",
            display_name="Character Training Plan (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Runs a multi-stage training plan on a dataset version of the character through the training "
                "launcher (kohya-ss sd-scripts): one job per stage on that stage's subsets (sub-folders), each "
                "continuing from the previous stage's LoRA (--network_weights). Each finished stage is recorded "
                "in the profile at once (LoRA, stage, report); a failing stage stops the plan with its log tail "
                "and the earlier stages stay recorded. A stage with \"refine\": true runs the 2-step loop first: test "
                "images from the previous LoRA, the low scorers' faces fixed, the good ones added to a new dataset "
                "version it trains on (needs model, clip, vae). Presets: three_stage (appearance on all layers; "
                "details on the close-ups with 3 repeats; expressions and poses), two_step (train, refine, train "
                "again), single; or custom JSON."
            ),
            is_output_node=True,
            not_idempotent=True,
            inputs=[
                Character.Input("character", tooltip="The profile; its latest dataset version is used unless dataset_path is set."),
                io.Combo.Input("plan", options=[*planlib.PRESETS, "custom"], default="three_stage",
                               tooltip="A preset plan, or custom (the JSON below)."),
                io.String.Input("custom_plan", default="", multiline=True,
                                tooltip='JSON: {"stages": [{"name": "appearance", "subsets": ["*"], "repeats": 1, '
                                        '"overrides": {"max_train_epochs": 4}}, ...]} (used when plan is custom).'),
                io.Combo.Input("training_preset", options=_training_presets(),
                               tooltip="The training preset (trainers/<id>.json) every stage uses."),
                io.String.Input("checkpoint", default="",
                                tooltip="Base checkpoint: a file name in ComfyUI's checkpoints folder."),
                io.String.Input("overrides", default="", multiline=True,
                                tooltip="'name = value' lines for every stage (allow-listed settings, e.g. max_train_epochs = 200)."),
                io.String.Input("dataset_path", default="", optional=True,
                                tooltip="A dataset folder inside ComfyUI's input or output folder; empty: the profile's latest dataset version."),
                io.String.Input("job_prefix", default="", optional=True,
                                tooltip="Prefix of the job names (default: <character>_r<revision>)."),
                io.Model.Input("model", optional=True,
                               tooltip="With model, clip and vae connected and eval_images > 0, each stage's LoRA is tried: "
                                       "test images are generated and scored against the references (the stage's report)."),
                io.Clip.Input("clip", optional=True, tooltip="CLIP for the test images."),
                io.Vae.Input("vae", optional=True, tooltip="VAE for the test images."),
                io.Int.Input("eval_images", default=0, min=0, max=64, optional=True,
                             tooltip="Test images per stage (0: no consistency report, except in plans with a refine "
                                     "stage, whose stages are scored on refine_images test images)."),
                io.Int.Input("eval_resolution", default=1024, min=64, max=4096, step=8, optional=True,
                             tooltip="Side of the test images."),
                io.Int.Input("eval_steps", default=25, min=1, max=200, optional=True, tooltip="Sampling steps of the test images."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="Face model for the report and the refine step's scoring and face detection (default: dlib)."),
                io.Int.Input("refine_images", default=8, min=1, max=64, optional=True,
                             tooltip="Refine stages (the 2-step loop, e.g. the two_step plan): test images generated with "
                                     "the previous stage's LoRA (prompts over the framing ladder, seeds 0..n-1, "
                                     "eval_resolution, eval_steps). Those below the profile's threshold get their face "
                                     "fixed; those that reach it go into refine/ of a new dataset version the stage "
                                     "trains on. Needs model, clip and vae."),
                io.Float.Input("fix_denoise", default=0.45, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Refine stages: denoise of the face fix's first pass (masked), as Grow Character "
                                       "Layer's fix_denoise."),
                io.Float.Input("fix_denoise_2", default=0.40, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Refine stages: denoise of the face fix's second pass (whole crop), as Grow "
                                       "Character Layer's fix_denoise_2. 0 skips it."),
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile with every stage's LoRA recorded."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The last stage's LoRA (for LoraLoader)."),
                io.String.Output("report", display_name="report", tooltip="Per stage: LoRA, starting weights, images, time, report."),
            ],
        )

    @classmethod
    def validate_inputs(cls, plan, training_preset, custom_plan=""):
        from ..continuity.character import plan as planlib
        bad = _common.validation_error(cls, {"plan": plan, "training_preset": training_preset,
                                             "custom_plan": custom_plan})
        if bad is not True:
            return bad
        if plan == "custom":
            try:
                planlib.parse_plan(custom_plan, input="custom_plan")
            except ContinuityError as exc:
                return str(_common.node_error(cls, "custom_plan", exc.message))
        return True

    @classmethod
    @_common.reports_errors("plan")
    def execute(cls, character, plan, custom_plan, training_preset, checkpoint, overrides, dataset_path="",
                job_prefix="", model=None, clip=None, vae=None, eval_images=0, eval_resolution=1024, eval_steps=25,
                face_model=None, refine_images=8, fix_denoise=0.45, fix_denoise_2=0.40) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils
        import folder_paths

        from ..continuity import training
        from ..continuity.character import plan as planlib
        char = charlib.as_character(character)
        the_plan = planlib.parse_plan(custom_plan if plan == "custom" else plan,
                                      input="custom_plan" if plan == "custom" else "plan")
        refining = [st.name for st in the_plan.stages if st.refine]
        if refining and (model is None or clip is None or vae is None):
            missing = [n for n, v in (("model", model), ("clip", clip), ("vae", vae)) if v is None]
            raise ContinuityError(f"stage(s) {', '.join(refining)} of plan '{the_plan.name}' run the 2-step refine loop, "
                                  "which generates test images with the previous stage's LoRA: connect model, clip and "
                                  f"vae (the checkpoint the LoRA is trained for); {', '.join(missing)} not connected. "
                                  "Nothing was trained.", input="model")
        ds_dir = _dataset_dir(char, dataset_path)
        preset, ckpt = _preset_and_checkpoint(training_preset, checkpoint)
        base_overrides = training.parse_overrides(overrides)
        sd = training.load_sd_scripts(folder_paths.get_user_directory(), script=preset.script)
        loras_root = folder_paths.get_folder_paths("loras")[0]
        jobs_root = training_jobs_root()
        model_roots = [_common.models_dir(), *folder_paths.get_folder_paths("checkpoints")]
        pbar = comfy.utils.ProgressBar(len(the_plan.stages) * 100)
        state = {"stage": 0}

        def on_progress(ev):
            step, total = getattr(ev, "step", None), getattr(ev, "total", None)
            if step and total:
                pbar.update_absolute(state["stage"] * 100 + int(100 * min(step, total) / total))

        make_job, launch = planlib.launcher_steps(
            character=char, preset=preset, sd_python=sd.python, sd_root=sd.root, jobs_root=jobs_root,
            loras_root=loras_root, models={"pretrained_model_name_or_path": ckpt}, model_roots=model_roots,
            base_overrides=base_overrides, job_prefix=(job_prefix or "").strip(), on_progress=on_progress,
            cancel_event=_glue.InterruptFlag())

        def counted_make(stage, index, items, weights, d):
            state["stage"] = index - 1
            return make_job(stage, index, items, weights, d)

        root = os.path.dirname(char.folder)
        versions = {ds_dir: next((d.get("version") for d in reversed(char.datasets)
                                  if os.path.realpath(str(d.get("path", ""))) == ds_dir), None)}

        def record_stage(res):
            rel = os.path.relpath(res.lora_path, loras_root).replace(os.sep, "/")
            extra = {"stage_name": res.name, "plan": the_plan.name, "network_weights": res.network_weights,
                     "dataset": res.dataset_dir, "images": res.images, "repeats": res.repeats}
            if res.refine:
                extra["refine"] = res.refine
            return charlib.record_lora(
                root, char.name, lora_name=rel, path=res.lora_path, stage=res.index,
                dataset_version=versions.get(os.path.realpath(res.dataset_dir)), job=res.job, report=res.report,
                extra=extra).revision
        cache: dict = {}   # test images of this run, shared by the reports and the refine step
        # a refining plan is always scored, so that the report shows whether the step helped
        n_eval = eval_images or (refine_images if refining else 0)
        evaluate = refine = None
        if n_eval and model is not None and clip is not None and vae is not None:
            def evaluate(stage, lora_path):
                return evaluate_lora(char, model, clip, vae, lora_path, n_eval, eval_resolution, eval_steps,
                                     face_model, cache=cache)
        if refining:
            def refine(stage, prev, current_dir):
                folder, summary = refine_dataset(
                    char, model, clip, vae, lora_path=prev.lora_path, dataset_dir=current_dir, n=refine_images,
                    side=eval_resolution, steps=eval_steps, face_model=face_model, cache=cache,
                    plan_name=the_plan.name, stage_name=stage.name, denoise_1=fix_denoise, denoise_2=fix_denoise_2)
                versions[os.path.realpath(folder)] = summary["dataset_version"]
                return folder, summary
        try:
            results = planlib.run_plan(the_plan, dataset_dir=ds_dir, make_job=counted_make, launch=launch,
                                       on_stage_done=record_stage, evaluate=evaluate, refine=refine,
                                       interrupted=_glue.throw_if_interrupted,
                                       passthrough=(comfy.model_management.InterruptProcessingException,))
        except planlib.PlanFailed as exc:
            charlib.record(root, char.name, action="plan_failed", summary=exc.message.splitlines()[0], changes={})
            raise
        pbar.update_absolute(len(the_plan.stages) * 100)
        new = charlib.load_profile(root, char.name)
        text = planlib.format_report(the_plan, results)
        last = new.latest_lora()
        return io.NodeOutput(new, last["name"] if last else "", text, ui={"text": [text]})


NODES = [CharacterTrainingPlan]
