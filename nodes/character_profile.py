"""Character profile nodes: Load / Save Character, Character Info, Record Character Result (V3
adapters over ``continuity.character``)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from comfy_api.latest import io

from ..continuity import character as charlib
from ..continuity import store
from ..continuity.errors import ContinuityError
from ..continuity.paths import safe_name
from . import _common, _glue
from ._types import CATEGORY, Character, Dataset, FaceModel, TrainJob

NO_PROFILES = "(no profiles yet)"


def characters_root() -> str:
    """Where profiles live: ``<ComfyUI output>/continuity/characters``."""
    return os.path.join(_common.output_dir(), "continuity", "characters")


def profile_options() -> list[str]:
    try:
        names = charlib.list_profiles(characters_root())
    except OSError:
        names = []
    return names or [NO_PROFILES]


def image_list(images) -> list[np.ndarray]:
    return [t.detach().cpu().float().numpy() for t in _common.split_images(images)]


def images_out(paths: list[str]) -> list[torch.Tensor]:
    from ..continuity.imageio import load_image
    return [_common.np_to_image(load_image(p)[0]) for p in paths]


def reference_embeddings(face_model, images: list[np.ndarray]) -> tuple[str, np.ndarray]:
    """The identity embedding of the largest face of each image (cached by image content, shared with
    the scoring nodes); a clear error if no image has a face."""
    from ..continuity.scoring.similarity import embed_images
    det, emb, name = _glue.face_backend(face_model)
    found = [r.embedding for r in embed_images(images, emb, detector=det, policy="largest") if r.found]
    if not found:
        raise ContinuityError("no face was found in any reference image, so no identity embedding can be stored",
                              input="references")
    return name, np.stack(found).astype(np.float32)


# ----------------------------------------------------------------------------- Load Character

class LoadCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityLoadCharacter",
            display_name="Load Character (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Loads a character profile (ComfyUI output/continuity/characters/<name>) at its latest "
                "revision or an earlier one. The CHARACTER value carries the trigger word, class phrase, "
                "reference portraits, thresholds, identity embeddings, dataset versions and LoRAs; the "
                "mask, fix, scoring, dataset and training nodes accept it in place of their separate inputs."
            ),
            inputs=[
                io.Combo.Input("name", options=profile_options(),
                               tooltip="The character profile (refresh the page after saving a new one)."),
                io.Int.Input("revision", default=0, min=0, max=1_000_000,
                             tooltip="Manifest revision to load; 0 loads the latest."),
            ],
            outputs=[
                Character.Output("character", display_name="character", tooltip="The character profile at that revision."),
                io.String.Output("trigger_word", display_name="trigger_word", tooltip="The trigger word of the character's LoRA."),
                io.String.Output("class_phrase", display_name="class_phrase", tooltip="The class phrase, e.g. 'woman' or 'cartoon fox'."),
                io.String.Output("caption_prefix", display_name="caption_prefix", tooltip="'<trigger word> <class phrase>': the start of prompts and captions."),
                io.Image.Output("references", display_name="references", is_output_list=True, tooltip="The reference portraits, one IMAGE each."),
                io.String.Output("report", display_name="report", tooltip="A readable summary of the profile."),
            ],
        )

    @classmethod
    def validate_inputs(cls, name, revision=0):
        # ``name`` is a combo of the profiles found when the list was built: a profile that a Save
        # Character earlier in the queue makes is allowed too, so it is checked here as a name
        bad = _common.validation_error(cls, {"revision": revision})
        if bad is not True:
            return bad
        if not isinstance(name, str):
            return True
        if name == NO_PROFILES:
            return str(_common.node_error(cls, "name", "there are no character profiles yet: make one with Save Character"))
        try:
            safe_name(name, input="name")
            revs = charlib.revisions(os.path.join(characters_root(), name))
        except ContinuityError as exc:
            return str(_common.node_error(cls, "name", exc.message))
        if not revs:
            # Not an error yet: the profile may be made by a Save Character earlier in the queue (a shipped
            # workflow names 'my_character'); execute() reports a missing profile, naming this input.
            return True
        if revision and revision not in revs:
            return str(_common.node_error(cls, "revision", f"profile '{name}' has no revision {revision} (it has 1..{revs[-1]})"))
        return True

    @classmethod
    def fingerprint_inputs(cls, name, revision=0, **kwargs):
        try:
            return str(charlib.revisions(os.path.join(characters_root(), safe_name(name)))[-1:])
        except (ContinuityError, OSError):
            return None

    @classmethod
    @_common.reports_errors("name")
    def execute(cls, name, revision=0) -> io.NodeOutput:
        char = charlib.load_profile(characters_root(), name, revision or None)
        refs = images_out(char.reference_images())
        return io.NodeOutput(char, char.trigger_word, char.class_phrase, char.caption_prefix(), refs,
                             char.summary(), ui={"text": [char.summary()]})


# ----------------------------------------------------------------------------- Save Character

class SaveCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuitySaveCharacter",
            display_name="Save Character (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Creates a character profile, or adds a new revision to an existing one: every save is a new "
                "manifest entry and nothing is overwritten. Empty text fields, style 'keep' and threshold 0 "
                "keep the previous values. Reference portraits are stored by content hash; with a face model "
                "the mean identity embedding of the references is stored as safetensors."
            ),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.String.Input("name", default="",
                                tooltip="Profile name (a folder name). Empty: the name of the 'character' input."),
                io.String.Input("trigger_word", default="", tooltip="Trigger word of the character's LoRA (empty keeps it)."),
                io.String.Input("class_phrase", default="", tooltip="Class phrase, e.g. 'woman' (empty keeps it)."),
                io.Combo.Input("style", options=["keep", "realistic", "animated"], default="keep",
                               tooltip="realistic or animated (animated characters are also scored on style); keep: unchanged (realistic for a new profile)."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Identity similarity a good shot must reach (for every face model without its own); 0 keeps it."),
                io.String.Input("notes", default="", multiline=True, tooltip="Free notes (empty keeps them)."),
                Character.Input("character", optional=True,
                                tooltip="A loaded profile to update (its name is used when 'name' is empty)."),
                io.Image.Input("references", optional=True,
                               tooltip="Reference portraits to add (a batch or a list)."),
                io.Image.Input("style_references", optional=True,
                               tooltip="Style references (animated characters) to add."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="With a face model, the mean identity embedding of all references is stored for it."),
                io.Boolean.Input("replace_references", default=False, optional=True,
                                 tooltip="Replace the reference list with the new images instead of adding to it (old files stay)."),
                io.Float.Input("model_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Threshold for the connected face model only; 0 sets none."),
                io.Float.Input("style_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Colour-statistics style similarity an animated character's images must reach "
                                       "(Grow Character Layer without a CLIP vision model); 0 keeps it (0.75 for a new profile)."),
                io.Float.Input("clip_style_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CLIP-I style similarity (with a CLIP vision model); 0 keeps it (a new profile has "
                                       "none: the style references' own lowest leave-one-out CLIP-I is used)."),
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile at its new revision."),
                io.String.Output("report", display_name="report", tooltip="A readable summary of the profile."),
            ],
        )

    @classmethod
    def validate_inputs(cls, style, name, notes, trigger_word, class_phrase):
        bad = _common.validation_error(cls, {"style": style, "name": name, "notes": notes,
                                             "trigger_word": trigger_word, "class_phrase": class_phrase})
        if bad is not True:
            return bad
        for value in (name or [])[:1]:
            if isinstance(value, str) and value.strip():
                try:
                    safe_name(value, input="name")
                except ContinuityError as exc:
                    return str(_common.node_error(cls, "name", exc.message))
        return True

    @classmethod
    @_common.reports_errors("name")
    def execute(cls, name, trigger_word, class_phrase, style, threshold, notes, character=None, references=None,
                style_references=None, face_model=None, replace_references=None, model_threshold=None,
                style_threshold=None, clip_style_threshold=None) -> io.NodeOutput:
        name = (_glue.first(name) or "").strip()
        char_in = charlib.as_character(_glue.first(character))
        if not name:
            if char_in is None:
                raise ContinuityError("give a profile name or connect a character to update", input="name")
            name = char_in.name
        name = safe_name(name, input="name")
        style = _glue.first(style)
        refs = image_list(references)
        style_refs = image_list(style_references)
        face_model = _glue.first(face_model)
        root = characters_root()
        exists = bool(charlib.revisions(os.path.join(root, name)))
        if not exists and not refs:
            raise ContinuityError(f"a new profile ('{name}') needs at least one reference portrait", input="references")
        embeddings, thresholds = {}, {}
        if face_model is not None:
            all_refs = refs
            if exists and not _glue.first(replace_references):
                old = charlib.load_profile(root, name)
                all_refs = old.load_reference_images() + refs
            model, embs = reference_embeddings(face_model, all_refs)
            embeddings[model] = embs
            mt = _glue.first(model_threshold) or 0.0
            if mt > 0:
                thresholds[model] = mt
        char = charlib.save_profile(
            root, name, trigger_word=_glue.first(trigger_word), class_phrase=_glue.first(class_phrase),
            style=None if style == "keep" else style, references=refs, style_references=style_refs,
            replace_references=bool(_glue.first(replace_references)), thresholds=thresholds or None,
            default_threshold=(_glue.first(threshold) or None), notes=_glue.first(notes), embeddings=embeddings or None,
            style_threshold=(_glue.first(style_threshold) or None), clip_style_threshold=(_glue.first(clip_style_threshold) or None))
        return io.NodeOutput(char, char.summary(), ui={"text": [char.summary()]})


# ----------------------------------------------------------------------------- Character Info

class CharacterInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityCharacterInfo",
            display_name="Character Info (Continuity)",
            category=f"{CATEGORY}/character",
            description="Takes a CHARACTER apart for nodes that do not accept one: prompt text, references, "
                        "threshold, latest LoRA and dataset.",
            inputs=[
                Character.Input("character", tooltip="A profile from Load Character."),
                io.String.Input("text", default="", multiline=True,
                                tooltip="Prompt text to append after '<trigger word> <class phrase>, '."),
                io.String.Input("face_model_name", default="",
                                tooltip="Face model whose threshold to output (empty: the profile's default)."),
                io.String.Input("stage", default="", tooltip="LoRA stage to pick (empty: the latest LoRA of any stage)."),
            ],
            outputs=[
                io.String.Output("prompt", display_name="prompt", tooltip="'<trigger word> <class phrase>, <text>'."),
                io.String.Output("trigger_word", display_name="trigger_word", tooltip="The trigger word."),
                io.String.Output("class_phrase", display_name="class_phrase", tooltip="The class phrase."),
                io.Image.Output("references", display_name="references", is_output_list=True, tooltip="The reference portraits."),
                io.Float.Output("threshold", display_name="threshold", tooltip="Similarity threshold (0 when the profile has none)."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="File name of the latest LoRA for LoraLoader ('' if none)."),
                io.String.Output("dataset_path", display_name="dataset_path", tooltip="Folder of the latest dataset version ('' if none)."),
                io.String.Output("report", display_name="report", tooltip="A readable summary of the profile."),
            ],
        )

    @classmethod
    @_common.reports_errors("character")
    def execute(cls, character, text="", face_model_name="", stage="") -> io.NodeOutput:
        char = charlib.as_character(character)
        lora = char.latest_lora(stage or None)
        ds = char.latest_dataset()
        thr = char.threshold(face_model_name or None, 0.0) or 0.0
        return io.NodeOutput(char.prompt(text), char.trigger_word, char.class_phrase,
                             images_out(char.reference_images()), float(thr),
                             (lora or {}).get("name", ""), str((ds or {}).get("path", "")), char.summary())


# ----------------------------------------------------------------------------- Record Character Result

def attr(obj, *names, default=None):
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


#: a report kept with a LoRA (JSON text), and its nesting: every later revision of the profile carries
#: it, and a revision past the profile reader's bounds would make the profile unreadable
MAX_REPORT_CHARS = 256_000
MAX_REPORT_DEPTH = 16


def _report_value(report: str):
    """The report as JSON when it is JSON (bounded in size and depth), else as text."""
    if not report or not report.strip():
        return {}
    try:
        rep = json.loads(report)
    except json.JSONDecodeError:
        rep = {"text": report}
    except RecursionError:
        raise ContinuityError("the report is nested too deeply to keep", input="report") from None
    if not store.depth_ok(rep, MAX_REPORT_DEPTH):
        raise ContinuityError(f"the report is nested more than {MAX_REPORT_DEPTH} levels deep", input="report")
    size = len(json.dumps(rep, ensure_ascii=False))
    if size > MAX_REPORT_CHARS:
        raise ContinuityError(f"the report is {size} characters of JSON; at most {MAX_REPORT_CHARS} are kept with "
                              "the LoRA", input="report")
    return rep


class RecordCharacterResult(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityRecordCharacterResult",
            display_name="Record Character Result (Continuity)",
            category=f"{CATEGORY}/character",
            description="Adds a revision to a profile after a training run (the LoRA, its stage and report) "
                        "or a new dataset version. Nothing is overwritten.",
            is_output_node=True,
            inputs=[
                Character.Input("character", tooltip="The profile to update."),
                TrainJob.Input("train_job", optional=True, tooltip="A finished training job: its LoRA is recorded."),
                Dataset.Input("dataset", optional=True, tooltip="A dataset version to record."),
                io.String.Input("lora_name", default="", optional=True,
                                tooltip="A LoRA file name (in ComfyUI's loras folder) to record, when no train_job is connected."),
                io.String.Input("stage", default="1", optional=True, tooltip="Training stage of the LoRA (e.g. 1, 2, 3)."),
                io.String.Input("report", default="", multiline=True, optional=True,
                                tooltip="A consistency report (JSON or text) to keep with the LoRA."),
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile at its new revision."),
                io.String.Output("report_out", display_name="report", tooltip="A readable summary of the profile."),
            ],
        )

    @classmethod
    @_common.reports_errors("character")
    def execute(cls, character, train_job=None, dataset=None, lora_name="", stage="1", report="") -> io.NodeOutput:
        char = charlib.as_character(character)
        root = os.path.dirname(char.folder)
        changes: dict = {}
        ds_version = (char.latest_dataset() or {}).get("version")
        if dataset is not None:
            ds_version = attr(dataset, "version", default=None)
            ds_path = attr(dataset, "path", "folder", default="")
            changes["datasets"] = [{"version": ds_version, "path": str(ds_path), "note": ""}]
        rep = _report_value(report)
        if train_job is not None:
            state = attr(train_job, "state", default="finished")
            if state != "finished":
                raise ContinuityError(f"the training job is {state}; record it once it has finished "
                                      "(Train LoRA in wait mode, or after Training Status shows it finished)",
                                      input="train_job")
            lname = attr(train_job, "lora_name", "name", default="")
            lpath = attr(train_job, "lora_path", "output_path", default="")
            if not lname and lpath:
                lname = os.path.basename(str(lpath))
            if not lname:
                raise ContinuityError("this training job has no LoRA file yet (did it finish?)", input="train_job")
            changes["loras"] = [{"name": str(lname), "path": str(lpath or ""), "stage": stage or "1",
                                 "dataset_version": ds_version, "job": str(attr(train_job, "job_id", "id", default="")),
                                 "report": rep}]
        elif lora_name and lora_name.strip():
            changes["loras"] = [{"name": lora_name.strip(), "path": "", "stage": stage or "1",
                                 "dataset_version": ds_version, "job": "", "report": rep}]
        if not changes:
            raise ContinuityError("nothing to record: connect a train_job or a dataset, or give a lora_name", input="lora_name")
        parts = [f"LoRA {changes['loras'][0]['name']}" for _ in changes.get("loras", [])[:1]]
        parts += [f"dataset v{changes['datasets'][0]['version']}" for _ in changes.get("datasets", [])[:1]]
        new = charlib.record(root, char.name, action="training" if "loras" in changes else "dataset",
                             summary=", ".join(parts), changes=changes)
        return io.NodeOutput(new, new.summary(), ui={"text": [new.summary()]})


NODES = [LoadCharacter, SaveCharacter, CharacterInfo, RecordCharacterResult]
