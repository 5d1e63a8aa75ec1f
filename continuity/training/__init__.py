"""LoRA training with kohya-ss sd-scripts v0.10.1, ComfyUI-free.

Core API (used by ``nodes/training.py`` and by multi-stage plans such as the character profile):

    from continuity.training import (load_sd_scripts, load_preset, list_presets, parse_overrides,
                                     build_command, create_job, launch, REGISTRY, TrainJob)

    sd = load_sd_scripts(user_dir)                  # env CONTINUITY_SD_SCRIPTS(_PYTHON) or
                                                    # <user>/continuity/training.json; checks tag v0.10.1
    preset = load_preset("sdxl_realistic")          # trainers/<id>.json
    job = create_job(jobs_root=..., loras_root=..., job_name="anna_stage1", preset=preset,
                     overrides={"max_train_epochs": 400},      # allow-listed names only
                     python=sd.python, sd_scripts_root=sd.root, tokenizer_cache_dir=sd.tokenizer_cache_dir,
                     extra_optimizers=sd.extra_optimizers,
                     models={"pretrained_model_name_or_path": "/.../models/checkpoints/sdxl.safetensors"},
                     model_roots=[models_dir], images=[rgb...], masks=[m...], captions=[...],
                     reg_images=[...], token="ohwx", class_phrase="woman",
                     network_weights=None)          # a previous LoRA (.safetensors) to continue from
    lora_path = launch(job, on_progress=fn, cancel_event=threading.Event())   # blocks; raises
                                                    # TrainingFailed (log tail) / TrainingCancelled
    launch(job, resume=True)                        # continue from the latest recorded state
    job = load_job(job_dir, loras_root=..., python=sd.python, sd_root=sd.root, model_roots=[...])  # keyed read-back
    REGISTRY.start(job, mode="background"); REGISTRY.status(job.job_id); REGISTRY.cancel(job.job_id)
    configure(private_dir)                          # where the HMAC key of job/status/states files lives

* ``build_command(preset, overrides, *, python, sd_scripts_root, dataset_config, output_dir,
  output_name, models, model_roots, network_weights=None, resume=None)`` returns the argument
  list alone (checked against ``contract_v0.10.1.json``).
* ``write_dataset(stage_dir, final_dir, images=..., masks=..., ...)`` writes RGBA PNGs
  (alpha = the mask, 1 = train here), captions and ``dataset.toml``.
* ``Progress`` events: kind "step" (step, total, loss, eta_s), "epoch", "checkpoint", "total" (the
  trainer's own step count).
* Job folder: ``<jobs_root>/<job>/{img,reg,dataset.toml,job.json,states.json,out/,logs/run.log,status.json}``;
  the final LoRA is moved to ``<loras_root>/<job>/<job>.safetensors``.
"""
from .command import (EXTRA_OPTIMIZERS, OPTIMIZERS, OVERRIDABLE, BuiltCommand, Preset, build_command,
                      check_against_contract, check_job_name, list_presets, load_preset, parse_overrides,
                      resolve_settings)
from .config import SdScripts, SdScriptsNotConfigured, load_sd_scripts
from .dataset import DatasetWritten, write_dataset
from .launcher import (TrainingCancelled, TrainingFailed, TrainJob, clean_private_runs, create_job, find_states,
                       latest_state, launch, load_job, resume_argv, stop_all_trainers)
from .progress import LineSplitter, Progress, parse_line
from .records import RecordError, configure
from .registry import REGISTRY, JobRegistry, install_shutdown_hooks, read_status_file, reconcile

__all__ = [
    "EXTRA_OPTIMIZERS", "OPTIMIZERS", "OVERRIDABLE", "BuiltCommand", "Preset", "build_command",
    "check_against_contract", "check_job_name", "list_presets", "load_preset", "parse_overrides", "resolve_settings",
    "SdScripts", "SdScriptsNotConfigured", "load_sd_scripts", "DatasetWritten", "write_dataset",
    "TrainingCancelled", "TrainingFailed", "TrainJob", "clean_private_runs", "create_job", "find_states", "latest_state", "launch",
    "load_job", "resume_argv", "stop_all_trainers", "LineSplitter", "Progress", "parse_line", "RecordError",
    "configure", "REGISTRY", "JobRegistry", "install_shutdown_hooks", "read_status_file", "reconcile",
]
