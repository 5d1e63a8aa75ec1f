"""Character nodes: Load / Save Character, Character Info, Record Character Result,
Character Training Plan and Grow Character Layer (V3 adapters over ``continuity.character``)."""
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
from . import _common
from ._types import CATEGORY, Character, Dataset, FaceModel, TrainJob

NO_PROFILES = "(no profiles yet)"


def characters_root() -> str:
    """Where profiles live: ``<ComfyUI output>/continuity/characters``."""
    return os.path.join(_common.output_dir(), "continuity", "characters")


def character_datasets(char) -> str:
    """Where a character's dataset versions live: ``output/continuity/datasets/<character>``, the one
    dataset root (Save Dataset Version with a character writes there too)."""
    return os.path.join(_common.output_dir(), "continuity", "datasets", char.name)


def _profile_options() -> list[str]:
    try:
        names = charlib.list_profiles(characters_root())
    except OSError:
        names = []
    return names or [NO_PROFILES]


def _image_list(images) -> list[np.ndarray]:
    return [t.detach().cpu().float().numpy() for t in _common.split_images(images)]


def _images_out(paths: list[str]) -> list[torch.Tensor]:
    from ..continuity.imageio import load_image
    return [_common.np_to_image(load_image(p)[0]) for p in paths]


def _first(value, default=None):
    """Unwrap a value given to a node with ``is_input_list`` (a list of one item)."""
    if isinstance(value, list):
        return value[0] if value else default
    return value


# ----------------------------------------------------------------------------- face model duck-typing

def face_backend(face_model):
    """(detector, embedder, model name) from a FACE_MODEL value, duck-typed on the face interface."""
    if face_model is None:
        return None, None, None
    det = getattr(face_model, "detector", None)
    emb = getattr(face_model, "embedder", None)
    if callable(emb) and not hasattr(emb, "embed"):   # FaceAnalyzer.embedder() builds it on first use
        emb = emb()
    if det is None and hasattr(face_model, "detect"):
        det = face_model
    if emb is None and hasattr(face_model, "embed"):
        emb = face_model
    if det is None or emb is None or not hasattr(det, "detect") or not hasattr(emb, "embed"):
        raise ContinuityError("this face model has no identity embedder (it must detect and embed faces)",
                              input="face_model")
    return det, emb, getattr(emb, "name", None) or type(emb).__name__


def reference_embeddings(face_model, images: list[np.ndarray]) -> tuple[str, np.ndarray]:
    """The identity embedding of the largest face of each image (cached by image content, shared with
    the scoring nodes); a clear error if no image has a face."""
    from ..continuity.scoring.similarity import embed_images
    det, emb, name = face_backend(face_model)
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
                io.Combo.Input("name", options=_profile_options(),
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
                io.String.Output("summary", display_name="summary", tooltip="A readable summary of the profile."),
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
        refs = _images_out(char.reference_images())
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
                io.String.Output("summary", display_name="summary", tooltip="A readable summary of the profile."),
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
        name = (_first(name) or "").strip()
        char_in = charlib.as_character(_first(character))
        if not name:
            if char_in is None:
                raise ContinuityError("give a profile name or connect a character to update", input="name")
            name = char_in.name
        name = safe_name(name, input="name")
        style = _first(style)
        refs = _image_list(references)
        style_refs = _image_list(style_references)
        face_model = _first(face_model)
        root = characters_root()
        exists = bool(charlib.revisions(os.path.join(root, name)))
        if not exists and not refs:
            raise ContinuityError(f"a new profile ('{name}') needs at least one reference portrait", input="references")
        embeddings, thresholds = {}, {}
        if face_model is not None:
            all_refs = refs
            if exists and not _first(replace_references):
                old = charlib.load_profile(root, name)
                all_refs = old.load_reference_images() + refs
            model, embs = reference_embeddings(face_model, all_refs)
            embeddings[model] = embs
            mt = _first(model_threshold) or 0.0
            if mt > 0:
                thresholds[model] = mt
        char = charlib.save_profile(
            root, name, trigger_word=_first(trigger_word), class_phrase=_first(class_phrase),
            style=None if style == "keep" else style, references=refs, style_references=style_refs,
            replace_references=bool(_first(replace_references)), thresholds=thresholds or None,
            default_threshold=(_first(threshold) or None), notes=_first(notes), embeddings=embeddings or None,
            style_threshold=(_first(style_threshold) or None), clip_style_threshold=(_first(clip_style_threshold) or None))
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
                io.String.Output("summary", display_name="summary", tooltip="A readable summary of the profile."),
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
                             _images_out(char.reference_images()), float(thr),
                             (lora or {}).get("name", ""), str((ds or {}).get("path", "")), char.summary())


# ----------------------------------------------------------------------------- Record Character Result

def _attr(obj, *names, default=None):
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
                io.String.Output("summary", display_name="summary", tooltip="A readable summary of the profile."),
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
            ds_version = _attr(dataset, "version", default=None)
            ds_path = _attr(dataset, "path", "folder", default="")
            changes["datasets"] = [{"version": ds_version, "path": str(ds_path), "note": ""}]
        rep = _report_value(report)
        if train_job is not None:
            state = _attr(train_job, "state", default="finished")
            if state != "finished":
                raise ContinuityError(f"the training job is {state}; record it once it has finished "
                                      "(Train LoRA in wait mode, or after Training Status shows it finished)",
                                      input="train_job")
            lname = _attr(train_job, "lora_name", "name", default="")
            lpath = _attr(train_job, "lora_path", "output_path", default="")
            if not lname and lpath:
                lname = os.path.basename(str(lpath))
            if not lname:
                raise ContinuityError("this training job has no LoRA file yet (did it finish?)", input="train_job")
            changes["loras"] = [{"name": str(lname), "path": str(lpath or ""), "stage": stage or "1",
                                 "dataset_version": ds_version, "job": str(_attr(train_job, "job_id", "id", default="")),
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



# ----------------------------------------------------------------------------- shared: sampling, scoring

def _encode_text(clip, text: str):
    import nodes as comfy_nodes
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def _apply_character_lora(char, model, clip, strength: float) -> tuple[object, object, str]:
    """The character's latest LoRA applied to model and clip, if it is in ComfyUI's loras folder."""
    import comfy.sd
    import folder_paths
    lora = char.latest_lora()
    if lora is None or strength == 0:
        return model, clip, "no LoRA" if lora is None else "LoRA off (strength 0)"
    path = folder_paths.get_full_path("loras", lora["name"])
    if path is None:
        return model, clip, f"LoRA '{lora['name']}' is not in the loras folder; sampled without it"
    model, clip = comfy.sd.load_lora_for_models(model, clip, _load_lora_file(path), strength, strength)
    return model, clip, f"LoRA {lora['name']} at {strength}"


_last_lora: dict = {}


def _load_lora_file(path: str) -> dict:
    """The LoRA's state dict; the last one read is kept (as ComfyUI's LoraLoader does), so applying it
    to a second model, or again in the next run, does not read the file again. Keyed by the file's
    path, size and modification time, so a retrained LoRA under the same name is read anew."""
    import comfy.utils
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if _last_lora.get("key") != key:
        _last_lora.clear()
        _last_lora.update(key=key, sd=comfy.utils.load_torch_file(path, safe_load=True))
    return _last_lora["sd"]


def _scorer(face_model):
    """(detector, embedder) for scoring: the connected face model's, else dlib's (cached per process)."""
    if face_model is not None:
        det, emb, _ = face_backend(face_model)
        return det, emb
    from ..continuity.faces import embedders
    from ..continuity.scoring.similarity import get_face_detector
    return get_face_detector("dlib"), embedders.get_embedder("dlib")


def _identity_scores(char, images: list[np.ndarray], det, emb) -> list[tuple[float | None, int]]:
    """(mean similarity to the references or None, faces found) per image (embeddings cached by content)."""
    from ..continuity.scoring import score_set
    refs = char.load_reference_images()
    if not refs:
        raise ContinuityError(f"the profile '{char.name}' has no reference portraits to score against", input="character")
    ss = score_set(refs, images, [emb], detector=det, name="layer")
    ms = next(iter(ss.models.values()))
    return [(m, c.n_faces) for m, c in zip(ms.mean, ms.candidates)]


def _face_box_mask(h: int, w: int, box, grow: float = 0.25) -> np.ndarray:
    x0, y0, x1, y1 = box
    gw, gh = (x1 - x0) * grow, (y1 - y0) * grow
    m = np.zeros((h, w), np.float32)
    m[max(0, int(y0 - gh)):min(h, int(y1 + gh)), max(0, int(x0 - gw)):min(w, int(x1 + gw))] = 1.0
    return m


def fix_faces_and_rescore(char, images: list[np.ndarray], scores: list[float | None], *, det, emb, model, positive,
                          negative, vae, seeds: list[int], steps: int, cfg: float, sampler_name: str, scheduler: str,
                          denoise: float, size: int, rule: str = "not_lower") -> list[dict | None]:
    """Fix the largest face of each image and score it again (shared by Grow Character Layer and the
    refine step of Character Training Plan).

    The face: a square crop around its box (grown by 25 %, context 1.5, at least 64 px) upscaled to
    ``size`` with Lanczos, the face fix's two-pass inpaint (pass 1 at ``denoise``, no pass 2), and the
    Lanczos paste-back. ``positive``: one CONDITIONING for all, or a tuple with one per image. Per
    image: None when no face is found, else ``{"image", "score", "faces", "kept", "note"}``, where ``kept`` says the fix is to be
    kept: it does not lower the score (``rule="not_lower"``) or it raises it (``rule="higher"``), and
    the fixed image still has a face.
    """
    import comfy.model_management

    from ..continuity import geometry
    from ..continuity.faces.base import as_uint8_rgb
    from . import fix as fixmod  # the face fix's two-pass sampler
    if rule not in ("not_lower", "higher"):
        raise ValueError(f"unknown rule {rule}")
    positives = list(positive) if isinstance(positive, tuple) else [positive] * len(images)
    idx, fixed_imgs = [], []
    for j, img in enumerate(images):
        comfy.model_management.throw_exception_if_processing_interrupted()
        faces = det.detect(as_uint8_rgb(img))
        if not faces:
            continue
        face = max(faces, key=lambda f: f.area)
        fm = _face_box_mask(img.shape[0], img.shape[1], face.box)
        crops, cmasks, rec = geometry.crop_for_inpaint(img[None], fm[None], context=1.5, min_size=64, target=size)
        fixed, _ = fixmod.two_pass_inpaint(model, positives[j], negative, vae, torch.from_numpy(crops[..., :3]),
                                           torch.from_numpy(cmasks), seeds[j], steps, cfg, sampler_name, scheduler,
                                           denoise, 0.0)
        pasted = geometry.paste_back(rec, fixed)
        idx.append(j)
        fixed_imgs.append(np.asarray(pasted, np.float32).reshape(img.shape))
    out: list[dict | None] = [None] * len(images)
    if not idx:
        return out
    for j, img2, (s2, n2) in zip(idx, fixed_imgs, _identity_scores(char, fixed_imgs, det, emb)):
        s = scores[j]
        if rule == "higher":
            kept = s2 is not None and (s is None or s2 > s)
            why = "discarded (the score did not rise, or the face was lost)"
        else:
            kept = s2 is not None and (s is None or s2 >= s)
            why = "discarded (lower score or face lost)"
        note = f"fix scored {s2 if s2 is None else round(s2, 4)}; " + ("kept" if kept else why)
        out[j] = {"image": img2, "score": s2, "faces": n2, "kept": kept, "note": note}
    return out


def clip_style_embeddings(clip_vision, references: list[np.ndarray], candidates: list[np.ndarray]):
    """CLIP image embeddings (``clip_vision.encode_image(...).image_embeds``, L2-normalised) of the
    style references (each once) and of the candidates, as numpy arrays (m, d), (n, d)."""
    from .scoring import clip_image_embeds
    with torch.inference_mode():
        ref_e = clip_image_embeds(clip_vision, [torch.from_numpy(np.ascontiguousarray(r)) for r in references])
        cand_e = clip_image_embeds(clip_vision, [torch.from_numpy(np.ascontiguousarray(c)) for c in candidates])
    return ref_e.float().cpu().numpy(), cand_e.float().cpu().numpy()


# ----------------------------------------------------------------------------- Grow Character Layer

class GrowCharacterLayer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers
        from ..continuity.character import growth
        return io.Schema(
            node_id="ContinuityGrowCharacterLayer",
            display_name="Grow Character Layer (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Makes the next framing of a synthetic character dataset (close-up -> close-up portrait -> "
                "portrait -> 3/4 -> full body): each image of the current layer is placed on a larger canvas "
                "(ImagePadForOutpaint) and outpainted with inpaint conditioning and the character's latest LoRA; "
                "the face is fixed (crop, two-pass inpaint, paste back; the fix is kept only if it does not lower "
                "the identity score); every candidate is scored against the references (and, for animated "
                "characters, on style: CLIP-I with a CLIP vision model connected, else colour statistics); those "
                "above the profile's thresholds go, with a "
                "provenance file, into a new dataset version of the profile, which is recorded in a new revision."
            ),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                Character.Input("character", tooltip="The profile (references, thresholds, LoRA, previous dataset)."),
                io.Image.Input("images", tooltip="The current layer's images (a list or a batch)."),
                io.Model.Input("model", tooltip="The checkpoint to outpaint with (an inpaint model gets inpaint conditioning)."),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                io.Combo.Input("from_layer", options=list(growth.LAYERS[:-1]), default="closeup",
                               tooltip="The framing of the given images; the candidates have the next framing."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=8,
                             tooltip="Long side of the outpainted canvas (multiple of 8)."),
                io.Int.Input("candidates", default=2, min=1, max=64, tooltip="Candidates per image (seeds seed, seed+1, ...)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="First seed."),
                io.Int.Input("steps", default=25, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, tooltip="Guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal", tooltip="Scheduler."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="Extra prompt text; the character's trigger word, class phrase and the layer's framing words come first."),
                io.String.Input("negative", default="blurry, deformed, extra limbs, cropped", multiline=True, tooltip="Negative prompt."),
                io.Int.Input("feathering", default=24, min=0, max=512, tooltip="Feathering of the outpaint seam, in pixels."),
                io.Float.Input("lora_strength", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="Strength of the character's latest LoRA (when it is in the loras folder); 0: none."),
                io.Boolean.Input("fix_faces", default=True, tooltip="Fix each candidate's face (two-pass inpaint of a face crop)."),
                io.Float.Input("fix_denoise", default=0.45, min=0.0, max=1.0, step=0.01, tooltip="Denoise of the face fix's first pass."),
                io.Int.Input("fix_size", default=512, min=64, max=2048, step=64, tooltip="Side of the face crop for the fix."),
                io.Float.Input("threshold", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Identity threshold; 0 uses the profile's (else the face model's own)."),
                FaceModel.Input("face_model", optional=True, tooltip="Face model for detection and identity (default: dlib)."),
                io.String.Input("filenames", optional=True, tooltip="Names of the images, for the provenance (from Load Image Folder)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="A CLIP vision model (Load CLIP Vision): each candidate also gets a CLIP-I style "
                                            "score, the mean cosine of its image embedding to the style references' "
                                            "(each embedded once per run); animated characters are then filtered on CLIP-I "
                                            "instead of the colour statistics. Both scores are reported."),
                io.Float.Input("clip_style_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CLIP-I threshold for animated characters (with clip_vision); 0: the profile's "
                                       "clip_style_threshold, else the style references' own (the lowest mean CLIP-I of a "
                                       "style reference to the others; needs two or more), else the colour statistics decide."),
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile with the new dataset version recorded."),
                io.Image.Output("kept", display_name="kept", is_output_list=True, tooltip="The candidates that passed the filter."),
                io.Image.Output("candidates_out", display_name="candidates", is_output_list=True, tooltip="Every candidate, for review."),
                io.String.Output("report", display_name="report", tooltip="Per candidate: canvas, faces, identity and style scores, kept or why not (JSON)."),
                io.String.Output("dataset_path", display_name="dataset_path", tooltip="Folder of the new dataset version."),
            ],
        )

    @classmethod
    def validate_inputs(cls, from_layer, sampler_name, scheduler):
        return _common.validation_error(cls, {"from_layer": from_layer, "sampler_name": sampler_name, "scheduler": scheduler})

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, character, images, model, clip, vae, from_layer, resolution, candidates, seed, steps, cfg,  # noqa: C901
                sampler_name, scheduler, prompt, negative, feathering, lora_strength, fix_faces, fix_denoise,
                fix_size, threshold, face_model=None, filenames=None, clip_vision=None,
                clip_style_threshold=None) -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils
        import nodes as comfy_nodes

        from ..continuity.character import growth

        g = {k: _first(v) for k, v in dict(
            character=character, model=model, clip=clip, vae=vae, from_layer=from_layer, resolution=resolution,
            candidates=candidates, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
            prompt=prompt, negative=negative, feathering=feathering, lora_strength=lora_strength,
            fix_faces=fix_faces, fix_denoise=fix_denoise, fix_size=fix_size, threshold=threshold,
            face_model=face_model, clip_vision=clip_vision, clip_style_threshold=clip_style_threshold).items()}
        char = charlib.as_character(g["character"])
        srcs = _common.split_images(images)
        if not srcs:
            raise ContinuityError("no images given", input="images")
        names = list(filenames or [])
        names = [str(n) for n in names] + [f"image_{i}" for i in range(len(names), len(srcs))]
        layer = growth.next_layer(g["from_layer"])
        scale = growth.LAYER_SCALE[layer]
        det, emb = _scorer(g["face_model"])
        thr_default = float(getattr(emb, "threshold", 0.0))
        thr = g["threshold"] if g["threshold"] != 0 else char.threshold(getattr(emb, "name", None), thr_default)
        model_l, clip_l, lora_note = _apply_character_lora(char, g["model"], g["clip"], g["lora_strength"])
        text = char.prompt(", ".join(t for t in (growth.LAYER_PROMPT[layer], g["prompt"].strip()) if t))
        pos = _encode_text(clip_l, text)
        neg = _encode_text(clip_l, g["negative"])
        from . import fix as fixmod  # the face fix's two-pass sampler
        is_inpaint = fixmod._is_inpaint_model(model_l)
        pbar = comfy.utils.ProgressBar(len(srcs) * g["candidates"])
        import time
        timings: dict = {}
        t0 = time.perf_counter()
        cands: list = []
        outs: list[np.ndarray] = []
        for i, src in enumerate(srcs):
            src = src[..., :3].float()
            h, w = src.shape[:2]
            canvas = growth.plan_canvas(w, h, scale, g["resolution"])
            inner = comfy.utils.common_upscale(src[None].movedim(-1, 1), canvas.inner_w, canvas.inner_h,
                                               "lanczos", "disabled").movedim(1, -1).clamp(0, 1)
            padded, mask = comfy_nodes.ImagePadForOutpaint().expand_image(
                inner, canvas.left, canvas.top, canvas.right, canvas.bottom, g["feathering"])
            # encoded once per image, sampled once per candidate
            if is_inpaint:
                p1, n1, latent0 = comfy_nodes.InpaintModelConditioning().encode(pos, neg, padded, g["vae"], mask,
                                                                                noise_mask=True)
            else:
                p1, n1 = pos, neg
                latent0 = {"samples": g["vae"].encode(padded), "noise_mask": mask.reshape(-1, 1, *mask.shape[-2:])}
            for k in range(g["candidates"]):
                comfy.model_management.throw_exception_if_processing_interrupted()
                sd = g["seed"] + k
                latent = comfy_nodes.common_ksampler(model_l, sd, g["steps"], g["cfg"], g["sampler_name"], g["scheduler"],
                                                     p1, n1, dict(latent0), denoise=1.0)[0]
                dec = g["vae"].decode(latent["samples"])[..., :3].float().cpu().clamp(0, 1)
                if dec.ndim == 5:
                    dec = dec.reshape(-1, *dec.shape[-3:])
                m = mask.reshape(1, *mask.shape[-2:], 1).float()
                out = (padded * (1 - m) + dec[:1] * m)[0].numpy()
                cands.append(growth.Candidate(source=names[i], index=len(cands), seed=sd,
                                              canvas=(canvas.width, canvas.height)))
                outs.append(out)
                pbar.update(1)
        timings["outpaint_s"] = time.perf_counter() - t0
        # score, fix the faces, score the fixed ones; keep the fix only where it does not lower the score
        t0 = time.perf_counter()
        scores = _identity_scores(char, outs, det, emb)
        timings["score_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for c, (s, n) in zip(cands, scores):
            c.identity, c.faces, c.face_found, c.model = s, n, n > 0, getattr(emb, "name", "")
        if g["fix_faces"] and g["fix_denoise"] > 0:
            idx = [j for j, c in enumerate(cands) if c.face_found]
            outcomes = fix_faces_and_rescore(
                char, [outs[j] for j in idx], [cands[j].identity for j in idx], det=det, emb=emb, model=model_l,
                positive=pos, negative=neg, vae=g["vae"], seeds=[cands[j].seed for j in idx], steps=g["steps"],
                cfg=g["cfg"], sampler_name=g["sampler_name"], scheduler=g["scheduler"], denoise=g["fix_denoise"],
                size=g["fix_size"], rule="not_lower")
            for j, o in zip(idx, outcomes):
                if o is None:
                    continue
                c = cands[j]
                c.fixed, c.reason = o["kept"], ""
                if c.fixed:
                    outs[j], c.identity, c.faces = o["image"], o["score"], o["faces"]
                c.fix_note = o["note"]
        timings["fix_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        need_style = char.style == "animated"
        cv = g["clip_vision"]
        clip_thr, clip_thr_source = None, ""
        if need_style or cv is not None:   # both scores are reported; animated characters are filtered on style
            from PIL import Image as _PILImage
            style_refs = [np.asarray(_PILImage.open(p).convert("RGB"), np.float32) / 255.0
                          for p in char.style_reference_images()]
            cache: dict = {}
            for c, img in zip(cands, outs):
                c.style = growth.style_similarity(img, style_refs, cache=cache)
            if cv is not None:
                ref_e, cand_e = clip_style_embeddings(cv, style_refs, outs)
                for c, v in zip(cands, growth.clip_style_scores(cand_e, ref_e)):
                    c.clip_style = float(v)
                clip_thr, clip_thr_source = growth.clip_style_threshold(
                    g["clip_style_threshold"], getattr(char, "clip_style_threshold", None), ref_e)
        growth.apply_filter(cands, threshold=thr, style_threshold=char.style_threshold, need_style=need_style,
                            clip_style_threshold=clip_thr)
        style_info = {"filtered": need_style,
                      "metric": (cands[0].style_metric if cands else "") if need_style else "",
                      "colour_threshold": char.style_threshold if need_style else None,
                      "clip_i": cv is not None, "clip_threshold": clip_thr,
                      "clip_threshold_source": clip_thr_source}
        timings["style_filter_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prev = char.latest_dataset()
        prev_dir = None
        if prev and prev.get("path"):
            try:
                prev_dir = confine_dataset(str(prev["path"]))
            except ContinuityError:
                prev_dir = None
        provenance = {"character": char.name, "revision": char.revision, "from_layer": g["from_layer"],
                      "prompt": text, "negative": g["negative"], "lora": lora_note, "steps": g["steps"],
                      "cfg": g["cfg"], "sampler": g["sampler_name"], "scheduler": g["scheduler"],
                      "resolution": g["resolution"], "scale": scale, "face_model": getattr(emb, "name", ""),
                      "threshold": thr, "style_threshold": char.style_threshold if need_style else None,
                      "style": style_info}
        result = growth.write_layer(character_datasets(char), layer, cands, outs, previous=prev_dir,
                                    caption=growth.LAYER_PROMPT[layer], provenance=provenance)
        new = charlib.record_dataset(os.path.dirname(char.folder), char.name, version=result.version,
                                     path=result.folder, note=f"layer {layer}: {result.kept}/{len(cands)} kept",
                                     extra={"layer": layer, "kept": result.kept, "candidates": len(cands)})
        timings["write_s"] = time.perf_counter() - t0
        report = json.dumps({"layer": layer, "dataset_version": result.version, "dataset_path": result.folder,
                             "kept": result.kept, "lora": lora_note, "style": style_info,
                             "timings": {k: round(v, 3) for k, v in timings.items()},
                             "candidates": [dict(c.to_dict(), fix_note=getattr(c, "fix_note", "")) for c in cands]},
                            indent=1, default=str)
        kept = [_common.np_to_image(o) for c, o in zip(cands, outs) if c.kept]
        every = [_common.np_to_image(o) for o in outs]
        return io.NodeOutput(new, kept, every, report, result.folder,
                             ui={"text": [f"{layer}: kept {result.kept} of {len(cands)} -> {result.folder}"
                                          + (f" (style filter: {style_info['metric']})" if need_style else "")]})


def confine_dataset(path: str, input: str = "dataset_path") -> str:
    """A dataset folder inside ComfyUI's input or output folder (relative paths: the input folder)."""
    from ..continuity.paths import confine
    return confine(path, _common.allowed_roots("input", "output"), input=input, kind="dir")


# ----------------------------------------------------------------------------- Character Training Plan

TEST_NEGATIVE = "blurry, deformed"
# The refine step's face fix: Grow Character Layer's default fix_denoise, and a crop the size of the
# test images (a multiple of 64, 64-1024 px).
REFINE_FIX_DENOISE = 0.45


def _lora_models(model, clip, lora_path: str, strength: float = 1.0):
    import comfy.sd
    return comfy.sd.load_lora_for_models(model, clip, _load_lora_file(lora_path), strength, strength)


def generate_test_images(char, model, clip, vae, lora_path: str, n: int, side: int, steps: int,
                         cache: dict | None = None):
    """``n`` test images made with a LoRA: prompt i is ``char.prompt(<framing words of layer i mod 5>)``
    over the framing ladder, seed i, euler / normal, cfg 6, ``side`` x ``side``. Returns (images,
    prompts, layers, model with the LoRA, clip with the LoRA). ``cache`` (a dict) keeps the images of
    one run, so the refine step reuses the previous stage's test images instead of sampling them again."""
    import nodes as comfy_nodes

    from ..continuity.character import growth
    m, c = _lora_models(model, clip, lora_path)      # the file is read once (_load_lora_file)
    neg = None
    images, prompts, layers = [], [], []
    for i in range(n):
        layer = growth.LAYERS[i % len(growth.LAYERS)]
        text = char.prompt(growth.LAYER_PROMPT[layer])
        key = (os.path.realpath(lora_path), i, side, steps, text)
        img = cache.get(key) if cache is not None else None
        if img is None:
            _throw_if_interrupted()
            if neg is None:
                neg = _encode_text(c, TEST_NEGATIVE)
            latent = comfy_nodes.EmptyLatentImage().generate(side, side, 1)[0]
            out = comfy_nodes.common_ksampler(m, i, steps, 6.0, "euler", "normal", _encode_text(c, text), neg,
                                              latent)[0]
            img = vae.decode(out["samples"])[0, ..., :3].float().cpu().clamp(0, 1).numpy()
            if cache is not None:
                cache[key] = img
        images.append(img)
        prompts.append(text)
        layers.append(layer)
    return images, prompts, layers, m, c


def evaluate_lora(char, model, clip, vae, lora_path: str, n: int, side: int, steps: int, face_model=None,
                  cache: dict | None = None) -> dict:
    """The consistency report of one LoRA: ``n`` test images (prompts over the framing ladder, seeds 0..n-1)
    generated with it and scored against the character's references."""
    images, prompts, _, _, _ = generate_test_images(char, model, clip, vae, lora_path, n, side, steps, cache)
    det, emb = _scorer(face_model)
    scores = _identity_scores(char, images, det, emb)
    vals = [s for s, _ in scores if s is not None]
    thr = char.threshold(getattr(emb, "name", None), float(getattr(emb, "threshold", 0.0)))
    return {"model": getattr(emb, "name", ""), "count": n, "scored": len(vals),
            "faces_missing": n - len(vals), "mean": float(np.mean(vals)) if vals else None,
            "passing": sum(1 for v in vals if thr is not None and v >= thr), "threshold": thr,
            "per_image": [s for s, _ in scores], "prompts": prompts}


def refine_dataset(char, model, clip, vae, *, lora_path: str, dataset_dir: str, n: int, side: int, steps: int,
                   face_model=None, cache: dict | None = None, plan_name: str = "", stage_name: str = "") -> tuple[str, dict]:
    """The refine step of the 2-step loop, before a stage marked ``"refine": true``.

    ``n`` test images are made with the previous stage's LoRA (:func:`generate_test_images`) and scored
    against the references; the faces of those below the threshold (the profile's for the face model,
    else the model's own) are fixed as Grow Character Layer fixes them, a fix is kept only if it raises
    the score; the images that reach the threshold go, captioned as the dataset's captions are, into
    ``refine/`` of a new version of the character's dataset (``output/continuity/datasets/<character>/vN``:
    the previous version as it is + ``refine/``, provenance in its manifest), which is recorded in the
    profile. Returns (folder, summary).
    """
    from ..continuity.character import growth
    from ..continuity.character import plan as planlib
    images, prompts, layers, m, c = generate_test_images(char, model, clip, vae, lora_path, n, side, steps, cache)
    det, emb = _scorer(face_model)
    model_name = getattr(emb, "name", "")
    thr = char.threshold(model_name or None, float(getattr(emb, "threshold", 0.0)))
    recs = [planlib.RefineImage(index=i, seed=i, layer=layers[i], prompt=prompts[i], faces=nf, before=sc)
            for i, (sc, nf) in enumerate(_identity_scores(char, images, det, emb))]
    final = list(images)
    todo = [i for i, r in enumerate(recs) if planlib.needs_fix(r, thr)]
    if todo:
        neg = _encode_text(c, TEST_NEGATIVE)
        conds = {p: _encode_text(c, p) for p in {prompts[i] for i in todo}}
        outcomes = fix_faces_and_rescore(
            char, [images[i] for i in todo], [recs[i].before for i in todo], det=det, emb=emb, model=m,
            positive=tuple(conds[prompts[i]] for i in todo), negative=neg, vae=vae, seeds=list(todo), steps=steps,
            cfg=6.0, sampler_name="euler", scheduler="normal", denoise=REFINE_FIX_DENOISE,
            size=max(64, min(1024, side // 64 * 64)), rule="higher")
        for i, o in zip(todo, outcomes):
            if o is None:
                recs[i].fix_note = "the face detector found no face to fix"
                continue
            recs[i].fix_score, recs[i].fix_note = o["score"], o["note"]
            if o["kept"]:
                final[i] = o["image"]
    planlib.select_refined(recs, thr)
    carry, example = planlib.captions_carry_trigger(dataset_dir, char.trigger_word)
    for r in recs:
        r.caption = planlib.refine_caption(growth.LAYER_PROMPT[r.layer], trigger=char.trigger_word,
                                           class_phrase=char.class_phrase, carry_trigger=carry, example=example)
    provenance = {"character": char.name, "revision": char.revision, "plan": plan_name, "stage": stage_name,
                  "lora": lora_path, "model": model_name, "threshold": thr, "side": side, "steps": steps,
                  "cfg": 6.0, "sampler": "euler", "scheduler": "normal", "negative": TEST_NEGATIVE,
                  "fix": {"denoise_1": REFINE_FIX_DENOISE, "denoise_2": 0.0, "size": max(64, min(1024, side // 64 * 64)),
                          "kept_if": "the fixed image scores higher"},
                  "captions": "trigger word, class phrase, framing (as the dataset's captions)" if carry
                              else "framing words (the training preset adds the trigger word and class phrase)"}
    version, folder, sub = planlib.write_refined_version(character_datasets(char), dataset_dir, recs,
                                                         final, provenance=provenance)
    summary = planlib.refine_summary(recs, version=version, folder=folder, subfolder=sub, previous=dataset_dir,
                                     previous_images=len(planlib.select_subset(dataset_dir, ["*"])), threshold=thr,
                                     model=model_name)
    charlib.record_dataset(os.path.dirname(char.folder), char.name, version=version, path=folder,
                           note=f"refine before stage '{stage_name}': {summary['kept']}/{n} test images kept",
                           extra={"step": "refine", "plan": plan_name, "stage": stage_name, "previous": dataset_dir,
                                  "lora": lora_path, "kept": summary["kept"], "generated": n,
                                  "fixed": summary["fixed"], "threshold": thr, "model": model_name})
    return folder, summary


def _throw_if_interrupted():
    import comfy.model_management
    comfy.model_management.throw_exception_if_processing_interrupted()


class _InterruptFlag:
    """``is_set()`` turns true when the user presses Cancel in ComfyUI (the launcher polls it)."""

    def is_set(self) -> bool:
        import comfy.model_management
        return bool(comfy.model_management.processing_interrupted())


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
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile with every stage's LoRA recorded."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The last stage's LoRA (for LoraLoader)."),
                io.String.Output("report", display_name="report", tooltip="Per stage: LoRA, starting weights, images, time, report."),
            ],
        )

    @classmethod
    def validate_inputs(cls, plan, training_preset, custom_plan=""):
        bad = _common.validation_error(cls, {"plan": plan, "training_preset": training_preset, "custom_plan": custom_plan})
        if bad is not True:
            return bad
        if plan == "custom":
            from ..continuity.character import plan as planlib
            try:
                planlib.parse_plan(custom_plan, input="custom_plan")
            except ContinuityError as exc:
                return str(_common.node_error(cls, "custom_plan", exc.message))
        return True

    @classmethod
    @_common.reports_errors("plan")
    def execute(cls, character, plan, custom_plan, training_preset, checkpoint, overrides, dataset_path="",  # noqa: C901
                job_prefix="", model=None, clip=None, vae=None, eval_images=0, eval_resolution=1024, eval_steps=25,
                face_model=None, refine_images=8) -> io.NodeOutput:
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
        if dataset_path and dataset_path.strip():
            ds_dir = confine_dataset(dataset_path.strip())
        else:
            latest = char.latest_dataset()
            if not latest:
                raise ContinuityError(f"the profile '{char.name}' has no dataset version yet: give dataset_path "
                                      "or grow a layer first", input="dataset_path")
            ds_dir = confine_dataset(str(latest["path"]))
        preset = training.load_preset(training_preset)
        base_overrides = training.parse_overrides(overrides)
        ckpt = folder_paths.get_full_path("checkpoints", checkpoint) if checkpoint else None
        if ckpt is None:
            raise ContinuityError(f"'{checkpoint}' is not in ComfyUI's checkpoints folder "
                                  f"({', '.join(folder_paths.get_folder_paths('checkpoints'))})", input="checkpoint")
        slots = list(getattr(preset, "models", {}) or {"pretrained_model_name_or_path": {}})
        if slots != ["pretrained_model_name_or_path"]:
            raise ContinuityError(f"preset '{training_preset}' needs the model files {', '.join(slots)}; plans support "
                                  "presets with one checkpoint (use the training node for the others)",
                                  input="training_preset")
        sd = training.load_sd_scripts(folder_paths.get_user_directory(), script=preset.script)
        loras_root = folder_paths.get_folder_paths("loras")[0]
        jobs_root = os.path.join(_common.output_dir(), "continuity", "training")   # as the Train LoRA node
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
            cancel_event=_InterruptFlag())

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
                    plan_name=the_plan.name, stage_name=stage.name)
                versions[os.path.realpath(folder)] = summary["dataset_version"]
                return folder, summary
        try:
            results = planlib.run_plan(the_plan, dataset_dir=ds_dir, make_job=counted_make, launch=launch,
                                       on_stage_done=record_stage, evaluate=evaluate, refine=refine,
                                       interrupted=_throw_if_interrupted,
                                       passthrough=(comfy.model_management.InterruptProcessingException,))
        except planlib.PlanFailed as exc:
            charlib.record(root, char.name, action="plan_failed", summary=exc.message.splitlines()[0], changes={})
            raise
        pbar.update_absolute(len(the_plan.stages) * 100)
        new = charlib.load_profile(root, char.name)
        text = planlib.format_report(the_plan, results)
        last = new.latest_lora()
        return io.NodeOutput(new, last["name"] if last else "", text, ui={"text": [text]})


NODES = [LoadCharacter, SaveCharacter, CharacterInfo, RecordCharacterResult, GrowCharacterLayer, CharacterTrainingPlan]
