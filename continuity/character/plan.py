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
the low scorers, write a new dataset version) returns the dataset folder the stage trains on (and,
optionally, a summary kept in the stage's result). The ComfyUI-free parts of that step are here:
:func:`select_refined` (which fixes are kept, which images pass), :func:`refine_caption` and
:func:`write_refined_version` (a new version: the previous one as it is + ``refine/``).

:func:`run_plan` runs the stages one after another through callables (so the core knows nothing
of ComfyUI or of how jobs are launched), records each finished stage at once (``on_stage_done``),
and on a failure stops with :class:`PlanFailed`, whose message names the stage and says which
earlier results are kept.
"""
from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .. import store
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


def parse_plan(spec: str | dict, *, input: str = "plan") -> Plan:  # noqa: C901
    """A plan from JSON text, a dict, or a preset name; clear errors for anything malformed."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            spec = PRESETS[text]
        else:
            if not text.startswith(("[", "{")):
                raise ContinuityError(f"the plan is neither a preset ({', '.join(PRESETS)}) nor JSON", input=input)
            # bounded in size and nesting like everything the pack parses
            spec = store.load_json(text, what="the plan", input=input, max_bytes=200_000)
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
    """The images of ``dataset_dir`` whose folder matches one of ``patterns`` (natural order); a file
    or sub-folder that is a link out of ``dataset_dir`` is refused."""
    if not os.path.isdir(dataset_dir):
        raise ContinuityError(f"the dataset folder {ascii(os.path.basename(dataset_dir))} does not exist",
                              input="dataset")
    out = []
    # a version written by the pack keeps its masks in masks/: they are not training images
    skip_masks = os.path.isfile(os.path.join(dataset_dir, "manifest.json"))
    for rel in list_images(dataset_dir, recursive=True, roots=[dataset_dir], input="dataset"):
        rel_u = rel.replace(os.sep, "/")
        if skip_masks and rel_u.startswith("masks/"):
            continue
        folder = os.path.dirname(rel_u) or "."
        if any(p == "*" or fnmatch.fnmatchcase(folder, p) or fnmatch.fnmatchcase(folder.split("/")[0], p)
               for p in patterns):
            path = os.path.join(dataset_dir, rel)
            out.append(Item(path, rel_u, read_caption(path, caption_extension, roots=[dataset_dir])))
    return sorted(out, key=lambda it: natural_key(it.rel))


def subset_folders(dataset_dir: str) -> list[str]:
    """Sub-folders of a dataset that hold images (for messages)."""
    return sorted({os.path.dirname(r.replace(os.sep, "/")) or "."
                   for r in list_images(dataset_dir, recursive=True, roots=[dataset_dir], input="dataset")},
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
    refine: dict = field(default_factory=dict)   # what the refine step before it did (refine stages)

    def to_dict(self) -> dict:
        return asdict(self)


# make_job(stage, index, items, network_weights, dataset_dir) -> job (opaque, passed to launch)
MakeJob = Callable[[Stage, int, list[Item], "str | None", str], object]
Launch = Callable[[object], str]                            # job -> LoRA path
Evaluate = Callable[[Stage, str], dict]                     # (stage, LoRA path) -> consistency report
# (stage, previous result, dataset dir) -> new dataset dir, or (new dataset dir, summary dict)
Refine = Callable[[Stage, "StageResult", str], "str | tuple[str, dict]"]
OnStageDone = Callable[[StageResult], "int | None"]         # record it; returns the profile revision


def run_plan(plan: Plan, *, dataset_dir: str, make_job: MakeJob, launch: Launch, evaluate: Evaluate | None = None,
             refine: Refine | None = None, on_stage_done: OnStageDone | None = None,
             initial_weights: str | None = None, interrupted: Callable[[], None] | None = None,
             job_name: Callable[[Stage, int], str] | None = None,
             passthrough: tuple[type[BaseException], ...] = ()) -> list[StageResult]:
    """Run every stage in order; each stage's LoRA is the next stage's ``network_weights``.

    ``passthrough``: exception types that stop the plan as they are (the host's "user pressed
    Cancel" exception), instead of being reported as a failed stage or a failed report.

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
            refine_info: dict = {}
            if st.refine:
                if refine is None:
                    raise ContinuityError("this stage refines the dataset (2-step loop) but no refine step is available")
                out = refine(st, results[-1], current_dir)
                current_dir, refine_info = out if isinstance(out, tuple) else (out, {})
            items = select_subset(current_dir, st.subsets)
            if not items:
                raise ContinuityError(f"subsets {st.subsets} select no image in {current_dir}")
            job = make_job(st, i, items, weights, current_dir)
            lora = launch(job)
        except passthrough:
            raise
        except Exception as exc:
            kept = "; ".join(f"stage {r.index} ('{r.name}') LoRA {os.path.basename(r.lora_path)}" for r in results)
            msg = (f"stage {i} of {len(plan.stages)} ('{st.name}') failed, so the plan stopped: "
                   f"{getattr(exc, 'message', None) or exc}")
            msg += f"\nKept: {kept}." if kept else "\nNo stage had finished; nothing was recorded."
            raise PlanFailed(msg, results=results) from exc
        report, stop = {}, None
        if evaluate:
            try:   # a trained LoRA is never thrown away because its test images could not be scored
                report = evaluate(st, lora)
            except passthrough as exc:          # cancelled: the LoRA is recorded, then the plan stops
                report, stop = {"error": "the consistency report was cancelled"}, exc
            except Exception as exc:
                report = {"error": f"the consistency report failed: {getattr(exc, 'message', None) or exc}"}
        res = StageResult(i, st.name, str(getattr(job, "job_id", job)), lora, weights, current_dir, len(items),
                          st.repeats, round(time.perf_counter() - t0, 3), report, refine=dict(refine_info))
        if on_stage_done:
            res.revision = on_stage_done(res)
        results.append(res)
        if stop is not None:
            raise stop
        weights = lora
    return results


def _consistency(rep: dict) -> str:
    """'mean 0.612, passing 5/8, 0 without a face' from a consistency report."""
    if not isinstance(rep, dict) or not rep:
        return "no report"
    if rep.get("error"):
        return str(rep["error"])
    mean = rep.get("mean")
    n = rep.get("count")
    parts = [f"mean {mean:.3f}" if mean is not None else "no face scored"]
    if rep.get("passing") is not None and n:
        parts.append(f"passing {rep['passing']}/{n}")
    if rep.get("faces_missing"):
        parts.append(f"{rep['faces_missing']} without a face")
    return ", ".join(parts)


def format_report(plan: Plan, results: list[StageResult], error: str | None = None) -> str:
    """A readable table of the stages: LoRA, starting weights, images, what a refine step did, and
    the consistency report before (the previous stage's LoRA) and after (this stage's)."""
    lines = [f"plan '{plan.name}': {len(results)}/{len(plan.stages)} stages done"]
    prev = None
    for r in results:
        rep = r.report if isinstance(r.report, dict) else {}
        mean = rep.get("mean")
        prev_mean = prev.report.get("mean") if prev is not None and isinstance(prev.report, dict) else None
        delta = "" if mean is None or prev_mean is None else f" ({mean - prev_mean:+.3f} vs previous stage)"
        lines.append(f"{r.index}. {r.name}: {os.path.basename(r.lora_path)} from "
                     f"{os.path.basename(r.network_weights) if r.network_weights else 'scratch'}; "
                     f"{r.images} images x{r.repeats or 'preset'} repeats; {r.seconds:.1f}s"
                     + (f"; identity mean {mean:.3f}{delta}" if mean is not None else ""))
        if r.refine:
            f = r.refine
            thr = f.get("threshold")
            lines.append(f"   refine: {f.get('generated', 0)} test images with stage {prev.index if prev else '?'}'s "
                         f"LoRA, {f.get('below_threshold', 0)} below the threshold"
                         + (f" {thr:.3f}" if isinstance(thr, (int, float)) else "")
                         + f", {f.get('fixed', 0)} fixed (score not lower), {f.get('no_face', 0)} without a face; "
                         f"{f.get('kept', 0)} kept -> dataset v{f.get('dataset_version')} "
                         f"({f.get('subfolder', '')}/, the previous version's {f.get('previous_images', '?')} images as they were)")
        if prev is None and rep:
            lines.append(f"   consistency: {_consistency(rep)} (no earlier LoRA to compare with)")
        elif prev is not None and (rep or prev.report):
            lines.append(f"   consistency before (stage {prev.index}'s LoRA): {_consistency(prev.report)}; "
                         f"after: {_consistency(rep)}")
        prev = r
    if error:
        lines.append("FAILED: " + error)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the refine step (2-step loop)

REFINE_SUBFOLDER = "refine"


@dataclass
class RefineImage:
    """One test image of the refine step: generated with the previous stage's LoRA, scored, maybe fixed."""
    index: int
    seed: int
    layer: str                          # framing (growth.LAYERS) of its prompt
    prompt: str
    faces: int = 0
    before: float | None = None         # identity score as generated (None: no face)
    fix_score: float | None = None      # score of the face-fixed image (None: no fix tried or no face after it)
    fix_note: str = ""
    fixed: bool = False                 # the fix was kept (the score did not drop)
    score: float | None = None          # final score
    threshold: float | None = None
    kept: bool = False
    reason: str = ""
    caption: str = ""
    file: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def needs_fix(im: RefineImage, threshold: float | None) -> bool:
    """A face was found and it scores below the threshold: the face fix is tried."""
    return im.faces > 0 and im.before is not None and threshold is not None and im.before < threshold


def select_refined(images: list[RefineImage], threshold: float | None) -> list[RefineImage]:
    """Decide per image: the fix is kept by the face fix's keep rule (``continuity.fix.keep_fix``: the
    identity measure did not drop); the image is kept if its final score reaches ``threshold`` (None:
    every image with a face). Returns the same list."""
    from ..fix import keep_fix
    for im in images:
        im.threshold = threshold
        im.fixed = im.fix_score is not None and im.before is not None and keep_fix(im.before, im.fix_score)
        im.score = im.fix_score if im.fixed else im.before
        if im.faces == 0 or im.before is None:
            im.kept, im.reason = False, "no face found"
        elif threshold is None:
            im.kept, im.reason = True, f"identity {im.score:.3f} scored (no threshold)"
        elif im.score is not None and im.score >= threshold:
            im.kept = True
            im.reason = (f"fixed: identity {im.before:.3f} -> {im.score:.3f} >= threshold {threshold:.3f}" if im.fixed
                         else f"identity {im.score:.3f} >= threshold {threshold:.3f}")
        else:
            im.kept = False
            if im.fixed:
                note = f" (after the fix {im.score:.3f})"
            elif im.fix_score is not None:
                note = f" (fix scored {im.fix_score:.3f}, not kept)"
            else:
                note = f" ({im.fix_note})" if im.fix_note else ""
            im.reason = f"identity {im.before:.3f} < threshold {threshold:.3f}{note}"
    return images


def captions_carry_trigger(dataset_dir: str, trigger: str, *, caption_extension: str = ".txt") -> tuple[bool, str]:
    """Whether most captions of the dataset name the trigger word, and one that does (for its prefix)."""
    trig = trigger.strip().lower()
    if not trig or not os.path.isdir(dataset_dir):
        return False, ""
    caps = [it.caption for it in select_subset(dataset_dir, ["*"], caption_extension=caption_extension)
            if it.caption.strip()]
    with_trigger = [c for c in caps if trig in c.lower().replace(",", " ").split()]
    return bool(caps) and 2 * len(with_trigger) > len(caps), (with_trigger[0] if with_trigger else "")


def refine_caption(framing: str, *, trigger: str, class_phrase: str, carry_trigger: bool, example: str = "") -> str:
    """The caption of a refine image, written the way the dataset's captions are.

    When the dataset's captions name the trigger word (Build Caption's modular captions), the caption
    is ``[prefix ]<trigger> <class phrase>, <framing>`` with the prefix ("photo of", ...) of ``example``;
    otherwise (Grow Character Layer's captions) the framing words alone, since the training preset puts
    ``<trigger> <class phrase>, `` in front of every caption (trainers/*.json ``template``).
    """
    if not carry_trigger:
        return framing
    from ..dataset import captions as capmod
    prefix = capmod.parse(example, trigger=trigger, class_word=class_phrase).prefix if example else ""
    return capmod.Caption(trigger=trigger, class_word=class_phrase, framing=framing, prefix=prefix).compose()


def refine_summary(images: list[RefineImage], *, version: int, folder: str, subfolder: str, previous: str,
                   previous_images: int, threshold: float | None, model: str) -> dict:
    scored = [im.before for im in images if im.before is not None]
    final = [im.score for im in images if im.score is not None]
    return {"dataset_version": version, "dataset_path": folder, "subfolder": subfolder, "previous": previous,
            "previous_images": previous_images, "model": model, "threshold": threshold, "generated": len(images),
            "no_face": sum(1 for im in images if im.faces == 0 or im.before is None),
            "below_threshold": sum(1 for im in images if needs_fix(im, threshold)),
            "fix_tried": sum(1 for im in images if im.fix_score is not None or im.fix_note),
            "fixed": sum(1 for im in images if im.fixed), "kept": sum(1 for im in images if im.kept),
            "mean_before": float(sum(scored) / len(scored)) if scored else None,
            "mean_after_fix": float(sum(final) / len(final)) if final else None}


def write_refined_version(root: str, name: str, previous: str, images: list[RefineImage], pixels: list, *,
                          provenance: dict, subfolder: str = REFINE_SUBFOLDER) -> tuple[int, str, str]:
    """The next version of dataset ``name`` under ``root`` (the one dataset-version writer): the
    ``previous`` dataset's images carried over (never changed), plus ``<subfolder>/`` with the kept
    images and their ``caption``; the manifest's provenance lists every test image, kept or not,
    with its scores. Returns (version, folder, sub-folder name)."""
    from ..dataset import versions as vs
    from .datasets import carry_over, free_folder, jsonable
    if len(pixels) != len(images):
        raise ContinuityError(f"{len(pixels)} images for {len(images)} records", input="images")
    carried, parent, label = carry_over(root, previous)
    folder = free_folder(subfolder, carried)
    kept = [(im, px) for im, px in zip(images, pixels) if im.kept]
    new = [vs.Item(filename=f"{im.layer}_{im.index:04d}.png", rgb=px, caption=im.caption, folder=folder,
                   source=f"test image {im.index} (seed {im.seed})",
                   scores={k: float(v) for k, v in (("before", im.before), ("score", im.score)) if v is not None})
           for im, px in kept]
    if not carried and not new:
        raise ContinuityError("no test image reached the threshold and there is no previous dataset: nothing to "
                              "save", input="images")
    for (im, _), it in zip(kept, new):            # a fresh sub-folder: the names are as given
        im.file = f"{folder}/{it.filename}"
    prov = {**provenance, "step": "refine", "previous_version": label or None, "subfolder": folder,
            "images": [im.to_dict() for im in images]}
    ver = vs.save_version(root, name, carried + new, parent=parent, provenance=jsonable(prov),
                          note=f"refine: {len(kept)}/{len(images)} test images kept")
    if [rec["file"] for rec in ver.items[len(carried):]] != [im.file for im, _ in kept]:
        raise ContinuityError("the dataset version was written with other file names than its provenance lists",
                              input="images")
    return ver.number, ver.path, folder


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
