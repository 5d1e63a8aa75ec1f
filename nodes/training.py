"""Training nodes: Train LoRA (kohya-ss sd-scripts) and Training Status; HTTP status routes.

Thin adapters over ``continuity.training``: ComfyUI folders in, the LoRA name out (a value
LoraLoader accepts). Progress goes to ComfyUI's progress bar and to the websocket as
``continuity.train.progress`` events; ``web/js/training.js`` draws the loss curve on the node.
"""
from __future__ import annotations

import logging
import os
import queue
import time

import numpy as np
from comfy_api.latest import io

import folder_paths

from ..continuity import store, training
from ..continuity.errors import ContinuityError
from ..continuity.paths import confine
from . import _common
from ._types import CATEGORY, Character, Dataset, TrainJob

log = logging.getLogger("continuity")

EVENT = "continuity.train.progress"
NONE = "(none)"
MODEL_FOLDERS = ("checkpoints", "diffusion_models")
MASK_MEANINGS = ["1 = character (segmentation mask)", "1 = background (MASK from LoadImage of a cut-out)"]
_NODE_OF_JOB: dict[str, tuple] = {}   # job id -> (node id, websocket client id) of the prompt that started it


# ----------------------------------------------------------------------------- folders and messages
def jobs_root() -> str:
    return os.path.join(_common.output_dir(), "continuity", "training")


def loras_root() -> str:
    return folder_paths.get_folder_paths("loras")[0]


def _model_roots() -> list[str]:
    roots = [_common.models_dir()]
    for folder in ("checkpoints", "diffusion_models", "unet", "text_encoders", "clip", "vae", "loras"):
        try:
            roots += folder_paths.get_folder_paths(folder)
        except KeyError:
            pass
    return list(dict.fromkeys(roots))


def _safetensors(folder: str) -> list[str]:
    try:
        return [n for n in folder_paths.get_filename_list(folder) if n.lower().endswith(".safetensors")]
    except KeyError:
        return []


def _base_model_options() -> list[str]:
    return [f"{f}/{n}" for f in MODEL_FOLDERS for n in _safetensors(f)]


def _encoder_options() -> list[str]:
    return [NONE] + sorted(set(_safetensors("text_encoders")) | set(_safetensors("clip")))


def _known_base_model(value) -> bool:
    """A base-model choice: 'checkpoints/x.safetensors' as the list shows it, or a plain file name in
    one of the base-model folders (how ComfyUI's own loaders and older workflows name it)."""
    if not isinstance(value, str):
        return False
    if value in _base_model_options():
        return True
    return value.lower().endswith(".safetensors") and any(value in _safetensors(f) for f in MODEL_FOLDERS)


def _resolve_model(value: str, folders: tuple[str, ...], input_name: str) -> str:
    """A combo value ('checkpoints/x.safetensors' or a name in one of ``folders``) to a path."""
    folder, _, name = value.partition("/")
    candidates = [(folder, name)] if folder in folders else [(f, value) for f in folders]
    for f, n in candidates:
        try:
            path = folder_paths.get_full_path(f, n)
        except KeyError:
            path = None
        if path:
            return path
    raise ContinuityError(f"model '{value}' was not found in ComfyUI's {' or '.join(folders)} folders",
                          input=input_name)


def _client_id() -> str | None:
    """The websocket client of the prompt being executed (messages go to it only)."""
    try:
        import server
        inst = getattr(server.PromptServer, "instance", None)
        return getattr(inst, "client_id", None)
    except Exception:
        return None


def _send(data: dict, sid: str | None = None) -> None:
    try:
        import server
        inst = getattr(server.PromptServer, "instance", None)
        if inst is not None:
            inst.send_sync(EVENT, data, sid)
    except Exception:  # never let a client message break training
        log.debug("continuity: could not send %s", EVENT, exc_info=True)


def _public(status: dict, *, with_tail: bool = False) -> dict:
    """A status as clients see it: no process ids, an error without the log tail unless asked."""
    out = {k: v for k, v in status.items() if k not in ("pid", "pid_start")}
    err = out.get("error")
    if err and not with_tail:
        out["error"] = err.split("\n--- last lines ---")[0][:1000]
    return out


MESSAGE_KEYS = ("job_id", "state", "mode", "step", "total", "epoch", "epochs", "loss", "eta_s", "rate", "lora_name",
                "error", "warnings")


def _message(status: dict, node: str | None, kind: str | None = None) -> dict:
    msg = {k: status.get(k) for k in MESSAGE_KEYS}
    msg["node"] = node
    msg["kind"] = kind
    msg["point"] = status["losses"][-1] if status.get("losses") else None
    return msg


def _broadcast(status: dict) -> None:
    """Registry listener for background jobs: status updates to the client that started the job."""
    jid = status.get("job_id")
    if status.get("mode") != "background" or jid not in _NODE_OF_JOB:
        return
    node, sid = _NODE_OF_JOB[jid]
    _send(_message(_public(status, with_tail=True), node), sid)


training.REGISTRY.listeners.append(_broadcast)


def _sd_scripts(script: str):
    return training.load_sd_scripts(folder_paths.get_user_directory(), script=script)


def _unload_models() -> None:
    import comfy.model_management as mm
    mm.unload_all_models()
    mm.soft_empty_cache()


def _job_value(job, state: str, lora_name: str | None = None) -> dict:
    return {"job_id": job.job_id, "lora_name": lora_name or f"{job.job_id}/{job.output_name}.safetensors",
            "state": state, "preset": job.preset}


def _log_folder(job) -> str:
    """The job's log folder relative to ComfyUI's output folder (no server path)."""
    return os.path.relpath(os.path.join(job.job_dir, "logs"), _common.output_dir()).replace(os.sep, "/")


def _dataset_items(dataset) -> tuple[list, list, list]:
    """Images, 'train here' masks and captions of a dataset version, read again through the store
    (the socket value only names the version; its path and manifest are never trusted as given)."""
    from ..continuity.dataset import versions as vs
    root = os.path.join(_common.output_dir(), "continuity", "datasets")
    items = vs.read_items(vs.from_value(root, dataset, input="dataset"), input="dataset")
    if not items:
        raise ContinuityError("the dataset version holds no images", input="dataset")
    images = [it.rgb for it in items]
    masks = [it.mask if it.mask is not None else np.ones(it.rgb.shape[:2], np.float32) for it in items]
    return images, masks, [it.caption for it in items]


def _configure_core() -> None:
    """Server-side set-up: the private folder of the training key, trainers stopped with the
    server, and jobs a previous server left running shown as they are."""
    training.install_shutdown_hooks()
    try:
        training.clean_private_runs()
        fixed = training.reconcile(jobs_root(), training.REGISTRY)
        if fixed:
            log.warning("Continuity: training jobs left running by a previous server are now 'stopped': %s",
                        ", ".join(fixed))
    except OSError:
        log.exception("Continuity: could not check earlier training jobs")


# ----------------------------------------------------------------------------- Train LoRA
class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        presets = training.list_presets()
        return io.Schema(
            node_id="ContinuityTrainLoRA",
            display_name="Train LoRA (Continuity)",
            category=f"{CATEGORY}/training",
            description=(
                "Trains a LoRA with kohya-ss sd-scripts (v0.10.1, installed separately; see docs/training.md) from "
                "images, masks and captions or a dataset version. Writes a new job folder under "
                "output/continuity/training/<job>, runs sd-scripts in its own process (ComfyUI's models are unloaded "
                "first), shows step, loss and ETA, stops on Cancel, and puts the LoRA in models/loras/<job>/. "
                "'background' returns at once; follow it with Training Status."),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Combo.Input("preset", options=presets, default="sdxl_realistic" if "sdxl_realistic" in presets else None,
                               tooltip="Training recipe from trainers/: sdxl_realistic and flux_animated follow the paper; "
                                       "shot_type trains an SD 1.5 style LoRA per shot scale."),
                io.String.Input("job_name", default="my_character_v1",
                                tooltip="Name of the job folder and of the LoRA (letters, digits, - _ .). An existing job is "
                                        "never overwritten; with 'resume' it names the job to continue."),
                io.Combo.Input("base_model", options=_base_model_options(),
                               tooltip="Base model (.safetensors) from models/checkpoints (SDXL, SD 1.5) or "
                                       "models/diffusion_models (Flux.1 Schnell)."),
                io.Combo.Input("mode", options=["wait", "background"], default="wait",
                               tooltip="wait: the node runs until training ends and outputs the LoRA. background: returns "
                                       "at once with the job; the queue stays free (use Training Status)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue the job named job_name from its latest saved state instead of "
                                         "starting a new one (images are then ignored)."),
                io.String.Input("token", default="ohwx",
                                tooltip="Identifier token of the character, put before the class phrase in every "
                                        "caption (unused by shot_type)."),
                io.String.Input("class_phrase", default="woman",
                                tooltip="Class of the character ('woman', 'man', 'cartoon cat'); captions of the "
                                        "regularization images."),
                io.Combo.Input("shot", options=["close", "medium", "long"], default="close",
                               tooltip="shot_type preset only: the shot scale this style LoRA learns."),
                io.Combo.Input("mask_meaning", options=MASK_MEANINGS, default=MASK_MEANINGS[0],
                               tooltip="What a mask value of 1 means. Face/segmentation masks mark the character with 1; "
                                       "LoadImage's MASK of a cut-out is 1 - alpha, i.e. 1 on the background."),
                io.Int.Input("epochs", default=0, min=0, max=100_000,
                             tooltip="Epochs; 0 keeps the preset's value."),
                io.Int.Input("steps", default=0, min=0, max=10_000_000,
                             tooltip="Training steps instead of epochs; 0 keeps the preset's value."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-7,
                               tooltip="Learning rate for every trained part; 0 keeps the preset's values."),
                io.Int.Input("network_dim", default=0, min=0, max=1024,
                             tooltip="LoRA rank; 0 keeps the preset's value."),
                io.Float.Input("network_alpha", default=0.0, min=0.0, max=2048.0, step=0.5,
                               tooltip="LoRA alpha (scale alpha/dim); 0 keeps the preset's value."),
                io.String.Input("overrides", default="", multiline=True,
                                tooltip="More settings, one 'name = value' per line, from an allow-list (see "
                                        "docs/training.md), e.g. 'optimizer_type = Prodigy'. Anything else is refused."),
                io.Image.Input("images", optional=True,
                               tooltip="Character images (a batch or a list, any sizes)."),
                io.Mask.Input("masks", optional=True,
                              tooltip="One mask per image for the masked loss (see mask_meaning). Without masks the "
                                      "whole image is learned."),
                io.String.Input("captions", optional=True, force_input=True,
                                tooltip="One caption per image (e.g. from Load Image Folder)."),
                Dataset.Input("dataset", optional=True,
                              tooltip="A dataset version (images, captions, masks) instead of images/masks/captions."),
                io.Image.Input("reg_images", optional=True,
                               tooltip="Regularization (class) images, captioned with the class phrase; same "
                                       "[[datasets]] block as the character."),
                io.Combo.Input("clip_l", options=_encoder_options(), default=NONE, optional=True,
                               tooltip="Flux: CLIP-L text encoder from models/text_encoders."),
                io.Combo.Input("t5xxl", options=_encoder_options(), default=NONE, optional=True,
                               tooltip="Flux: T5-XXL text encoder from models/text_encoders."),
                io.Combo.Input("ae", options=[NONE] + _safetensors("vae"), default=NONE, optional=True,
                               tooltip="Flux: the autoencoder (ae.safetensors) from models/vae."),
                io.Combo.Input("continue_from", options=[NONE] + _safetensors("loras"), default=NONE, optional=True,
                               tooltip="Start from this LoRA's weights (--network_weights), e.g. stage 1 of a plan."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character): its trigger word and class phrase "
                                        "replace token and class_phrase."),
            ],
            outputs=[
                TrainJob.Output("job", display_name="job", tooltip="The training job (for Training Status)."),
                io.Combo.Output("lora_name", display_name="lora_name",
                                tooltip="The LoRA as LoraLoader names it ('<job>/<job>.safetensors'); in background "
                                        "mode the name it will have."),
                io.String.Output("log_path", display_name="log_path", tooltip="Folder with the job's logs."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, job_name=None, overrides=None, preset=None, base_model=None, mode=None, shot=None,
                        mask_meaning=None, clip_l=None, t5xxl=None, ae=None, continue_from=None):
        bad = _common.validation_error(cls, {"preset": preset, "mode": mode, "shot": shot,
                                             "mask_meaning": mask_meaning, "clip_l": clip_l, "t5xxl": t5xxl, "ae": ae,
                                             "continue_from": continue_from})
        if bad is not True:
            return bad
        for value in (base_model or [])[:1]:
            if not _known_base_model(value):
                return str(_common.node_error(cls, "base_model", f"{store.shown(value)} is not one of the choices"))
        for value in (job_name or [])[:1]:
            try:
                training.check_job_name(value)
            except ContinuityError as exc:
                return str(_common.node_error(cls, "job_name", exc.message))
        for value in (overrides or [])[:1]:
            try:
                training.parse_overrides(value)
            except ContinuityError as exc:
                return str(_common.node_error(cls, "overrides", exc.message))
        return True

    @classmethod
    def _overrides(cls, preset, epochs, steps, learning_rate, network_dim, network_alpha, text) -> dict:
        ov = training.parse_overrides(text)
        if epochs:
            ov["max_train_epochs"] = epochs
        if steps:
            ov["max_train_steps"] = steps
            if not epochs:
                ov.pop("max_train_epochs", None)
        if learning_rate:
            ov["learning_rate"] = learning_rate
            if "unet_lr" in preset.args:
                ov["unet_lr"] = learning_rate
            if "text_encoder_lr" in preset.args:
                ov["text_encoder_lr"] = [learning_rate]
        if network_dim:
            ov["network_dim"] = network_dim
        if network_alpha:
            ov["network_alpha"] = network_alpha
        return ov

    @classmethod
    def _models(cls, p, base_model, clip_l, t5xxl, ae) -> dict:
        models = {}
        for slot, value in (("pretrained_model_name_or_path", base_model), ("clip_l", clip_l), ("t5xxl", t5xxl),
                            ("ae", ae)):
            if slot not in p.models:
                continue
            input_name = "base_model" if slot == "pretrained_model_name_or_path" else slot
            if not value or value == NONE:
                raise ContinuityError(f"preset '{p.id}' needs the {p.models[slot].get('label', slot)}",
                                      input=input_name)
            folders = tuple(p.models[slot].get("folders", MODEL_FOLDERS))
            models[slot] = _resolve_model(value, folders, input_name)
        return models

    @classmethod
    def _training_data(cls, images, masks, captions, dataset, mask_meaning, first):
        if dataset:
            if images:
                raise ContinuityError("connect either images or a dataset, not both", input="dataset")
            imgs, char_masks, caps = _dataset_items(first(dataset))
            loadimage = False
        else:
            imgs = [t.cpu().numpy() for t in _common.split_images(images)]
            char_masks = [m.cpu().numpy() for m in _common.split_masks(masks)]
            caps = list(captions or [])
            loadimage = first(mask_meaning) == MASK_MEANINGS[1]
        if not imgs:
            raise ContinuityError("connect the character images (or a dataset version)", input="images")
        return imgs, char_masks, caps, loadimage

    @classmethod
    def _resumed_job(cls, name: str, sd):
        job_dir = confine(os.path.join(jobs_root(), name), [jobs_root()], input="job_name")
        if not os.path.isdir(job_dir):
            raise ContinuityError(f"there is no job '{name}' to resume", input="job_name")
        try:
            job = training.load_job(job_dir, loras_root=loras_root(), python=sd.python, sd_root=sd.root,
                                    model_roots=_model_roots(), weight_roots=folder_paths.get_folder_paths("loras"),
                                    tokenizer_cache_dir=sd.tokenizer_cache_dir, extra_optimizers=sd.extra_optimizers)
        except training.RecordError as exc:
            raise ContinuityError(f"job '{name}' cannot be resumed: {exc.message}", input="job_name") from None
        training.resume_argv(job)  # a clear message now if there is no recorded state
        return job

    @classmethod
    @_common.reports_errors("preset")
    def execute(cls, preset, job_name, base_model, mode, resume, token, class_phrase, shot, mask_meaning, epochs,
                steps, learning_rate, network_dim, network_alpha, overrides, images=None, masks=None,
                captions=None, dataset=None, reg_images=None, clip_l=None, t5xxl=None, ae=None,
                continue_from=None, character=None) -> io.NodeOutput:
        first = lambda v, d=None: (v[0] if isinstance(v, list) and v else (d if isinstance(v, list) or v is None else v))
        if first(character) is not None:   # a CHARACTER in place of the separate token / class phrase
            from ..continuity.character import as_character
            char = as_character(first(character))
            token, class_phrase = char.trigger_word or first(token, ""), char.class_phrase or first(class_phrase, "")
        preset_id, name, mode, resume = first(preset), first(job_name), first(mode), first(resume)
        node_id = str(cls.hidden.unique_id) if cls.hidden and cls.hidden.unique_id is not None else None
        p = training.load_preset(preset_id)
        sd = _sd_scripts(p.script)
        name = training.check_job_name(name)
        if resume:
            job = cls._resumed_job(name, sd)
        else:
            ov = cls._overrides(p, first(epochs), first(steps), first(learning_rate), first(network_dim),
                                first(network_alpha), first(overrides, ""))
            models = cls._models(p, first(base_model), first(clip_l, NONE), first(t5xxl, NONE), first(ae, NONE))
            weights = None
            cont = first(continue_from, NONE)
            if cont and cont != NONE:
                weights = folder_paths.get_full_path("loras", cont)
                if not weights:
                    raise ContinuityError(f"LoRA '{cont}' not found", input="continue_from")
            imgs, char_masks, caps, loadimage = cls._training_data(images, masks, captions, dataset, mask_meaning,
                                                                   first)
            regs = [t.cpu().numpy() for t in _common.split_images(reg_images)]
            job = training.create_job(
                jobs_root=jobs_root(), loras_root=loras_root(), job_name=name, preset=p, overrides=ov,
                python=sd.python, sd_scripts_root=sd.root, models=models, model_roots=_model_roots(),
                images=imgs, masks=char_masks or None, captions=caps or None, reg_images=regs or None,
                token=first(token, ""), class_phrase=first(class_phrase, ""), shot=first(shot, ""),
                mask_is_loadimage=loadimage, network_weights=weights,
                weight_roots=folder_paths.get_folder_paths("loras"), tokenizer_cache_dir=sd.tokenizer_cache_dir,
                extra_optimizers=sd.extra_optimizers)
        for w in job.warnings:
            log.warning("Continuity Train LoRA '%s': %s", job.job_id, w)
        _NODE_OF_JOB[job.job_id] = (node_id, _client_id())
        _unload_models()
        notes = [f"job name '{name}' was taken meanwhile: this job is '{job.job_id}'"] if job.job_id != name else []
        notes += [f"warning: {w}" for w in job.warnings]
        if mode == "background":
            training.REGISTRY.start(job, resume=bool(resume), mode="background")
            value = _job_value(job, "running")
            return io.NodeOutput(value, value["lora_name"], _log_folder(job),
                                 ui={"text": [f"training '{job.job_id}' started in the background"] + notes,
                                     "continuity_train": [{"job_id": job.job_id, "state": "running",
                                                           "warnings": job.warnings}]})
        st = cls._run_and_wait(job, bool(resume), node_id)
        value = _job_value(job, "finished", st.lora_name)
        return io.NodeOutput(value, value["lora_name"], _log_folder(job),
                             ui={"text": [f"LoRA written: {value['lora_name']}"] + notes,
                                 "continuity_train": [{"job_id": job.job_id, "state": "finished",
                                                       "lora_name": value["lora_name"], "step": st.step,
                                                       "total": st.total, "losses": st.losses,
                                                       "warnings": job.warnings}]})

    @classmethod
    def _run_and_wait(cls, job, resume: bool, node_id: str | None):
        """Run through the registry (status.json, server-stop handling); here: progress bar,
        websocket messages (each step's last value always sent), and the interrupt, tracked
        here because ComfyUI's progress hook clears the flag before anyone else sees it."""
        import comfy.model_management as mm
        import comfy.utils
        events: queue.Queue = queue.Queue()
        sid = _client_id()
        training.REGISTRY.start(job, resume=resume, mode="wait", listener=events.put)
        st = training.REGISTRY.get(job.job_id)
        pbar = comfy.utils.ProgressBar(max(1, st.total or 1), node_id=node_id)
        sender = _ThrottledSender(lambda msg: _send(msg, sid), node_id)
        interrupted = False
        while training.REGISTRY.is_running(job.job_id) or not events.empty():
            if mm.processing_interrupted() and not interrupted:
                interrupted = True
                training.REGISTRY.cancel(job.job_id)
            try:
                ev = events.get(timeout=0.1)
            except queue.Empty:
                sender.flush()          # no new render: the pending value is the step's value
                continue
            if ev.kind == "step" and st.total:
                try:
                    pbar.update_absolute(min(st.step, st.total), st.total)
                except mm.InterruptProcessingException:
                    interrupted = True       # the hook raised and cleared the flag: remember it
                    training.REGISTRY.cancel(job.job_id)
            sender.event(ev, _message(_public(st.to_dict(), with_tail=True), node_id, ev.kind))
        training.REGISTRY.wait(job.job_id)
        sender.flush()
        final = _public(st.to_dict(), with_tail=True)
        _send(_message(final, node_id, "end"), sid)
        if st.state == "finished":
            return st
        if interrupted or st.state in ("cancelled", "stopped"):
            raise mm.InterruptProcessingException()
        raise st.exc if isinstance(st.exc, ContinuityError) else training.TrainingFailed(st.error or "training failed")


class _ThrottledSender:
    """At most one message per 0.25 s per step, but never dropping a step's last value: the
    pending message of a step is sent when the next step starts or when no render came for 0.1 s."""

    def __init__(self, send, node_id, interval: float = 0.25):
        self.send, self.node_id, self.interval = send, node_id, interval
        self.pending: dict | None = None
        self.last = 0.0

    def event(self, ev, msg: dict) -> None:
        if ev.kind != "step":
            self.flush()
            self._out(msg)
            return
        if self.pending is not None and self.pending.get("step") != msg.get("step"):
            self.flush()
        self.pending = msg
        if time.time() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.pending is not None:
            msg, self.pending = self.pending, None
            self._out(msg)

    def _out(self, msg: dict) -> None:
        self.last = time.time()
        self.send(msg)


# ----------------------------------------------------------------------------- status
def job_status(job_id: str) -> dict | None:
    """In-memory status (jobs of this process), else the job's status.json (checked): as clients
    see it (no paths, no process ids, no log tail). Raises RecordError if the file is not valid."""
    job_id = training.check_job_name(job_id, input="job_id")
    st = training.REGISTRY.status(job_id)
    if st is None:
        st = training.read_status_file(os.path.join(jobs_root(), job_id))
    return _public(st) if st is not None else None


class TrainingStatus(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityTrainingStatus",
            display_name="Training Status (Continuity)",
            category=f"{CATEGORY}/training",
            description="State, step, loss and LoRA of a training job (background mode); can cancel it. "
                        "Re-runs on every queue so it always shows the current state.",
            is_output_node=True,
            inputs=[
                TrainJob.Input("job", optional=True, tooltip="The job from Train LoRA."),
                io.String.Input("job_id", default="", tooltip="Or the job's name, if no job is connected."),
                io.Boolean.Input("cancel", default=False, tooltip="Stop the job (its saved states allow a resume)."),
            ],
            outputs=[
                io.String.Output("state", display_name="state", tooltip="queued, running, finished, failed, cancelled, stopped (the server stopped; resume it) or unknown."),
                io.Int.Output("step", display_name="step", tooltip="Current step."),
                io.Float.Output("loss", display_name="loss", tooltip="Latest average loss (0 if none yet)."),
                io.Combo.Output("lora_name", display_name="lora_name", tooltip="The LoRA name once finished ('' before)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return time.time()  # a status must be read afresh each time

    @classmethod
    @_common.reports_errors("job_id")
    def execute(cls, job_id="", cancel=False, job=None) -> io.NodeOutput:
        jid = (job or {}).get("job_id") if isinstance(job, dict) else None
        jid = jid or job_id.strip()
        if not jid:
            raise ContinuityError("connect a job or give its name", input="job_id")
        jid = training.check_job_name(jid, input="job_id")
        if cancel:
            training.REGISTRY.cancel(jid)
        try:
            st = job_status(jid)
        except training.RecordError as exc:
            raise ContinuityError(f"the status of job '{jid}' cannot be read: {exc.message}", input="job_id") from None
        st = st or {"job_id": jid, "state": "unknown", "step": 0, "loss": None, "lora_name": None}
        if cls.hidden and cls.hidden.unique_id is not None and jid not in _NODE_OF_JOB:
            _NODE_OF_JOB[jid] = (str(cls.hidden.unique_id), _client_id())
        text = (f"{jid}: {st['state']} step {st.get('step') or 0}/{st.get('total') or '?'}"
                + (f" loss {st['loss']:.4g}" if st.get("loss") is not None else "")
                + (f"\n{st['error'][-600:]}" if st.get("error") else ""))
        return io.NodeOutput(st["state"], int(st.get("step") or 0), float(st.get("loss") or 0.0),
                             st.get("lora_name") or "",
                             ui={"text": [text], "continuity_train": [st]})


# ----------------------------------------------------------------------------- HTTP routes
def _register_routes() -> None:
    try:
        import server
        inst = getattr(server.PromptServer, "instance", None)
    except Exception:
        return
    if inst is None or getattr(inst, "_continuity_training_routes", False):
        return
    from aiohttp import web

    routes = inst.routes

    @routes.get("/continuity/train/jobs")
    async def _list(request):
        jobs = []
        for s_ in training.REGISTRY.all():
            try:
                jobs.append(job_status(s_["job_id"]))
            except ContinuityError:
                continue
        return web.json_response({"jobs": jobs})

    @routes.get("/continuity/train/jobs/{job_id}")
    async def _get(request):
        try:
            st = job_status(request.match_info["job_id"])
        except training.RecordError as exc:
            return web.json_response({"error": f"the job's status cannot be read: {exc.message}"}, status=422)
        except ContinuityError as exc:
            return web.json_response({"error": exc.message}, status=400)
        if st is None:
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(st)

    @routes.post("/continuity/train/jobs/{job_id}/cancel")
    async def _cancel(request):
        try:
            jid = training.check_job_name(request.match_info["job_id"], input="job_id")
        except ContinuityError as exc:
            return web.json_response({"error": exc.message}, status=400)
        ok = training.REGISTRY.cancel(jid)
        return web.json_response({"job_id": jid, "cancelled": ok}, status=200 if ok else 404)

    inst._continuity_training_routes = True


try:
    _register_routes()
except Exception:  # the nodes stay usable without the routes
    log.exception("Continuity: could not register the training routes")
_configure_core()


NODES = [TrainLoRA, TrainingStatus]
