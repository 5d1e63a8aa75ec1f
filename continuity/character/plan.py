"""Multi-stage training plans: an ordered list of training jobs on subsets of a dataset version.

A plan (JSON, or one of :data:`PRESETS`)::

    {"name": "three_stage",
     "stages": [
       {"name": "appearance",  "subsets": ["*"],                                   "overrides": {"max_train_epochs": 4}},
       {"name": "details",     "subsets": ["closeup", "closeup_portrait"], "repeats": 3},
       {"name": "expressions", "subsets": ["expressions", "poses"],       "repeats": 2}
     ]}

``subsets`` are glob patterns over the sub-folders of the dataset version (``"*"``: every image,
``"."``: the images at the top level only); ``repeats`` becomes the dataset's ``num_repeats``;
``overrides`` are the training launcher's overridable settings. Each stage after the first
continues from the previous stage's LoRA (``--network_weights``). A stage may set ``"refine": true``
to run the 2-step loop before it: the caller's ``refine`` hook (generate with the last LoRA, fix
the low scorers, write a new dataset version) returns the dataset folder the stage trains on.

:func:`run_plan` runs the stages one after another through callables (so the core knows nothing
of ComfyUI or of how jobs are launched), records each finished stage at once (``on_stage_done``),
and on a failure stops with :class:`PlanFailed`, whose message names the stage and says which
earlier results are kept.
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import ContinuityError
from ..imageio import list_images, natural_key, read_caption

STAGE_KEYS = {"name", "subsets", "repeats", "overrides", "refine", "note"}
PLAN_KEYS = {"name", "stages", "note"}

PRESETS: dict[str, dict] = {
    "three_stage": {
        "name": "three_stage",
        "note": "1: general appearance on every layer; 2: details and style on the close-ups, more repeats; "
                "3: expressions and poses.",
        "stages": [
            {"name": "appearance", "subsets": ["*"], "repeats": 1},
            {"name": "details", "subsets": ["closeup", "closeup_portrait", "closeup*"], "repeats": 3},
            {"name": "expressions", "subsets": ["expression*", "pose*"], "repeats": 2},
        ],
    },
    "two_step": {
        "name": "two_step",
        "note": "Train, fix the low scorers into a new dataset version, train again from the first LoRA.",
        "stages": [
            {"name": "first", "subsets": ["*"], "repeats": 1},
            {"name": "second", "subsets": ["*"], "repeats": 1, "refine": True},
        ],
    },
    "single": {"name": "single", "stages": [{"name": "all", "subsets": ["*"], "repeats": 1}]},
}


@dataclass
class Stage:
    name: str
    subsets: list[str] = field(default_factory=lambda: ["*"])
    repeats: int | None = None
    overrides: dict = field(default_factory=dict)
    refine: bool = False
    note: str = ""


@dataclass
class Plan:
    name: str
    stages: list[Stage]
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def parse_plan(spec: str | dict, *, input: str = "plan") -> Plan:
    """A plan from JSON text, a dict, or a preset name; clear errors for anything malformed."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            spec = PRESETS[text]
        else:
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ContinuityError(f"the plan is neither a preset ({', '.join(PRESETS)}) nor valid JSON: {exc}",
                                      input=input) from None
    if isinstance(spec, list):
        spec = {"name": "plan", "stages": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise ContinuityError("a plan needs a non-empty list 'stages'", input=input)
    unknown = set(spec) - PLAN_KEYS
    if unknown:
        raise ContinuityError(f"unknown plan keys: {', '.join(sorted(unknown))}", input=input)
    stages, names = [], set()
    for i, st in enumerate(spec["stages"], 1):
        if not isinstance(st, dict):
            raise ContinuityError(f"stage {i} is not an object", input=input)
        bad = set(st) - STAGE_KEYS
        if bad:
            raise ContinuityError(f"stage {i}: unknown keys {', '.join(sorted(bad))} (allowed: {', '.join(sorted(STAGE_KEYS))})",
                                  input=input)
        name = str(st.get("name") or f"stage{i}")
        if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 40:
            raise ContinuityError(f"stage {i}: name '{name}' must be letters, digits, '-' or '_'", input=input)
        if name in names:
            raise ContinuityError(f"stage {i}: the name '{name}' is used twice", input=input)
        names.add(name)
        subsets = st.get("subsets", ["*"])
        if isinstance(subsets, str):
            subsets = [subsets]
        if not isinstance(subsets, list) or not subsets or not all(isinstance(s, str) and s for s in subsets):
            raise ContinuityError(f"stage {i} ('{name}'): 'subsets' must be a list of folder patterns", input=input)
        for s in subsets:
            if s.startswith("/") or ".." in s.split("/"):
                raise ContinuityError(f"stage {i} ('{name}'): subset '{s}' must stay inside the dataset", input=input)
        repeats = st.get("repeats")
        if repeats is not None and (not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= 1000):
            raise ContinuityError(f"stage {i} ('{name}'): repeats must be an integer 1-1000", input=input)
        overrides = st.get("overrides", {}) or {}
        if not isinstance(overrides, dict):
            raise ContinuityError(f"stage {i} ('{name}'): 'overrides' must be an object", input=input)
        if i == 1 and st.get("refine"):
            raise ContinuityError("the first stage cannot refine: there is no LoRA yet to generate with", input=input)
        stages.append(Stage(name, list(subsets), repeats, dict(overrides), bool(st.get("refine", False)),
                            str(st.get("note", ""))))
    return Plan(str(spec.get("name") or "plan"), stages, str(spec.get("note", "")))


# ---------------------------------------------------------------------------- subsets

@dataclass
class Item:
    path: str       # absolute
    rel: str        # relative to the dataset folder
    caption: str


def select_subset(dataset_dir: str, patterns: list[str], *, caption_extension: str = ".txt") -> list[Item]:
    """The images of ``dataset_dir`` whose folder matches one of ``patterns`` (natural order)."""
    if not os.path.isdir(dataset_dir):
        raise ContinuityError(f"the dataset folder {dataset_dir} does not exist", input="dataset")
    out = []
    for rel in list_images(dataset_dir, recursive=True):
        rel_u = rel.replace(os.sep, "/")
        folder = os.path.dirname(rel_u) or "."
        if any(p == "*" or fnmatch.fnmatchcase(folder, p) or fnmatch.fnmatchcase(folder.split("/")[0], p)
               for p in patterns):
            path = os.path.join(dataset_dir, rel)
            out.append(Item(path, rel_u, read_caption(path, caption_extension)))
    return sorted(out, key=lambda it: natural_key(it.rel))


def subset_folders(dataset_dir: str) -> list[str]:
    """Sub-folders of a dataset that hold images (for messages)."""
    return sorted({os.path.dirname(r.replace(os.sep, "/")) or "." for r in list_images(dataset_dir, recursive=True)},
                  key=natural_key)


# ---------------------------------------------------------------------------- running

class PlanFailed(ContinuityError):
    """A stage failed; ``results`` holds the stages that finished before it (and are kept)."""

    def __init__(self, message: str, *, results: list, input: str | None = "plan"):
        super().__init__(message, input=input)
        self.results = results


@dataclass
class StageResult:
    index: int                      # 1-based
    name: str
    job: str
    lora_path: str
    network_weights: str | None
    dataset_dir: str
    images: int
    repeats: int | None
    seconds: float
    report: dict = field(default_factory=dict)
    revision: int | None = None     # profile revision that recorded it

    def to_dict(self) -> dict:
        return asdict(self)


# make_job(stage, index, items, network_weights, dataset_dir) -> job (opaque, passed to launch)
MakeJob = Callable[[Stage, int, list[Item], "str | None", str], object]
Launch = Callable[[object], str]                            # job -> LoRA path
Evaluate = Callable[[Stage, str], dict]                     # (stage, LoRA path) -> consistency report
Refine = Callable[[Stage, "StageResult", str], str]         # (stage, previous result, dataset dir) -> new dataset dir
OnStageDone = Callable[[StageResult], "int | None"]         # record it; returns the profile revision


def run_plan(plan: Plan, *, dataset_dir: str, make_job: MakeJob, launch: Launch, evaluate: Evaluate | None = None,
             refine: Refine | None = None, on_stage_done: OnStageDone | None = None,
             initial_weights: str | None = None, interrupted: Callable[[], None] | None = None,
             job_name: Callable[[Stage, int], str] | None = None) -> list[StageResult]:
    """Run every stage in order; each stage's LoRA is the next stage's ``network_weights``.

    Subsets are checked for every stage before anything is launched (an empty subset is an
    error that names it and lists the folders the dataset has), except stages after a ``refine``,
    whose dataset does not exist yet.
    """
    # check the subsets up front, so a typo in stage 3 does not waste stages 1 and 2
    refined = False
    for i, st in enumerate(plan.stages, 1):
        refined = refined or st.refine
        if not refined and not select_subset(dataset_dir, st.subsets):
            raise ContinuityError(f"stage {i} ('{st.name}') selects no image: subsets {st.subsets} match none of "
                                  f"the dataset's folders ({', '.join(subset_folders(dataset_dir)) or 'no images'})",
                                  input="plan")
    results: list[StageResult] = []
    weights = initial_weights
    current_dir = dataset_dir
    for i, st in enumerate(plan.stages, 1):
        if interrupted:
            interrupted()
        t0 = time.perf_counter()
        try:
            if st.refine:
                if refine is None:
                    raise ContinuityError("this stage refines the dataset (2-step loop) but no refine step is available")
                current_dir = refine(st, results[-1], current_dir)
            items = select_subset(current_dir, st.subsets)
            if not items:
                raise ContinuityError(f"subsets {st.subsets} select no image in {current_dir}")
            job = make_job(st, i, items, weights, current_dir)
            lora = launch(job)
        except Exception as exc:
            kept = "; ".join(f"stage {r.index} ('{r.name}') LoRA {os.path.basename(r.lora_path)}" for r in results)
            msg = (f"stage {i} of {len(plan.stages)} ('{st.name}') failed, so the plan stopped: "
                   f"{getattr(exc, 'message', None) or exc}")
            msg += f"\nKept: {kept}." if kept else "\nNo stage had finished; nothing was recorded."
            raise PlanFailed(msg, results=results) from exc
        report = {}
        if evaluate:
            try:   # a trained LoRA is never thrown away because its test images could not be scored
                report = evaluate(st, lora)
            except Exception as exc:
                report = {"error": f"the consistency report failed: {getattr(exc, 'message', None) or exc}"}
        res = StageResult(i, st.name, str(getattr(job, "job_id", job)), lora, weights, current_dir, len(items),
                          st.repeats, round(time.perf_counter() - t0, 3), report)
        if on_stage_done:
            res.revision = on_stage_done(res)
        results.append(res)
        weights = lora
    return results


def format_report(plan: Plan, results: list[StageResult], error: str | None = None) -> str:
    """A readable table of the stages: LoRA, starting weights, images, and the consistency report."""
    lines = [f"plan '{plan.name}': {len(results)}/{len(plan.stages)} stages done"]
    prev_mean = None
    for r in results:
        mean = r.report.get("mean") if isinstance(r.report, dict) else None
        delta = "" if mean is None or prev_mean is None else f" ({mean - prev_mean:+.3f} vs previous stage)"
        lines.append(f"{r.index}. {r.name}: {os.path.basename(r.lora_path)} from "
                     f"{os.path.basename(r.network_weights) if r.network_weights else 'scratch'}; "
                     f"{r.images} images x{r.repeats or 'preset'} repeats; {r.seconds:.1f}s"
                     + (f"; identity mean {mean:.3f}{delta}" if mean is not None else ""))
        if mean is not None:
            prev_mean = mean
    if error:
        lines.append("FAILED: " + error)
    return "\n".join(lines)



# ---------------------------------------------------------------------------- the training launcher

def unique_job_name(base: str, taken: Callable[[str], bool]) -> str:
    """``base`` made a valid job name (letters, digits, '_', '-', '.'; <= 64), with a counter if taken."""
    import re
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-")[:56] or "job"
    if not name[0].isalnum():
        name = "j" + name
    cand, n = name, 1
    while taken(cand):
        n += 1
        cand = f"{name}_{n}"
    return cand


def launcher_steps(*, character, preset, sd_python: str, sd_root: str, jobs_root: str, loras_root: str,
                   models: dict[str, str], model_roots: list[str], base_overrides: dict | None = None,
                   job_prefix: str = "", on_progress=None, cancel_event=None):
    """``(make_job, launch)`` for :func:`run_plan` on the training launcher (``continuity.training``).

    Each stage is one job ``<prefix>_<stage>`` (a counter is added if the name is taken) trained on
    the stage's images and captions, with the character's trigger word and class phrase, the
    stage's ``repeats`` as ``num_repeats`` and its ``overrides`` over ``base_overrides``; the
    previous stage's LoRA is passed as ``network_weights`` (allowed inside ``loras_root``).
    """
    from .. import training
    from ..imageio import load_image

    prefix = job_prefix or f"{character.name}_r{character.revision}"

    def taken(name: str) -> bool:
        return os.path.exists(os.path.join(jobs_root, name)) or os.path.exists(os.path.join(loras_root, name))

    def make_job(stage: Stage, index: int, items: list[Item], weights: str | None, dataset_dir: str):
        overrides = {**(base_overrides or {}), **stage.overrides}
        if stage.repeats is not None:
            overrides["num_repeats"] = stage.repeats
        overrides = {k: (("true" if v else "false") if isinstance(v, bool) else v) for k, v in overrides.items()}
        images = [load_image(it.path)[0] for it in items]
        name = unique_job_name(f"{prefix}_s{index}_{stage.name}", taken)
        return training.create_job(
            jobs_root=jobs_root, loras_root=loras_root, job_name=name, preset=preset, overrides=overrides,
            python=sd_python, sd_scripts_root=sd_root, models=models, model_roots=model_roots, images=images,
            captions=[it.caption for it in items], token=character.trigger_word, class_phrase=character.class_phrase,
            network_weights=weights, weight_roots=[loras_root])

    def launch(job) -> str:
        return training.launch(job, on_progress=on_progress, cancel_event=cancel_event)

    return make_job, launch
