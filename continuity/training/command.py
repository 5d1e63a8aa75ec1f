"""Presets and the sd-scripts command builder: allow-lists, typed overrides, contract check.

A preset (``trainers/<id>.json``) holds the script, the base-model slots, dataset settings,
caption templates and ``args``: option dest names (``network_dim``) with their values
(``true`` = flag, a list = several values). The user may override only the names in
:data:`OVERRIDABLE`, each checked for type, range and allow-list; nothing else reaches the
command line. The result is an argument list (never a shell string), checked option by option
against the sd-scripts v0.10.1 parser contract.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContinuityError, PathError

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "trainers")
CONTRACT_PATH = os.path.join(HERE, "contract_v0.10.1.json")

# ---------------------------------------------------------------- allow-lists
NETWORK_MODULES = {
    "sdxl_train_network.py": ("networks.lora", "networks.dylora", "networks.oft"),
    "train_network.py": ("networks.lora", "networks.dylora", "networks.oft"),
    "flux_train_network.py": ("networks.lora_flux",),
}
# Optimizers whose packages sd-scripts v0.10.1's own requirements.txt installs (torch, bitsandbytes,
# lion-pytorch, prodigyopt, transformers). Others need a package in sd-scripts' environment first:
# the server owner lists them in <user>/continuity/training.json ("extra_optimizers").
OPTIMIZERS = ("AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "SGDNesterov8bit",
              "Prodigy", "Adafactor")
# sd-scripts' own optimizer names that need an extra package (dadaptation, ...): allowed only when
# the server's training.json says they are installed.
EXTRA_OPTIMIZERS = ("DAdaptation", "DAdaptAdam", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion",
                    "DAdaptSGD", "PagedAdamW", "PagedAdamW32bit", "PagedLion8bit")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
TIMESTEP_SAMPLING = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
MODEL_PREDICTION = ("raw", "additive", "sigma_scaled")

_NUM = {"int": int, "float": float}


@dataclass(frozen=True)
class Param:
    kind: str                      # "int", "float", "bool", "choice", "float_list"
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    scripts: tuple = ()            # empty: every script
    target: str = "arg"            # "arg" (command line), "dataset" (TOML), "virtual"
    help: str = ""


OVERRIDABLE: dict[str, Param] = {
    "learning_rate": Param("float", 1e-9, 1.0, help="base learning rate"),
    "unet_lr": Param("float", 1e-9, 1.0, help="U-Net (or Flux transformer) learning rate"),
    "text_encoder_lr": Param("float_list", 0.0, 1.0, help="text-encoder learning rate(s); one value is used for each encoder"),
    "network_dim": Param("int", 1, 1024, help="LoRA rank"),
    "network_alpha": Param("float", 1e-3, 2048, help="LoRA alpha (scale = alpha/dim)"),
    "network_dropout": Param("float", 0.0, 1.0),
    "network_module": Param("choice", help="network module (allow-listed per script)"),
    "max_train_epochs": Param("int", 1, 100_000),
    "max_train_steps": Param("int", 1, 10_000_000),
    "save_every_n_epochs": Param("int", 1, 100_000),
    "save_every_n_steps": Param("int", 1, 10_000_000),
    "optimizer_type": Param("choice", choices=OPTIMIZERS),
    "lr_scheduler": Param("choice", choices=SCHEDULERS),
    "lr_warmup_steps": Param("int", 0, 10_000_000),
    "lr_scheduler_power": Param("float", 0.0, 100.0),
    "lr_scheduler_num_cycles": Param("int", 1, 10_000),
    "lr_end": Param("float", 0.0, 1.0, target="virtual", help="polynomial schedule end value (--lr_scheduler_args lr_end=...)"),
    "mixed_precision": Param("choice", choices=PRECISIONS),
    "save_precision": Param("choice", choices=SAVE_PRECISIONS),
    "seed": Param("int", 0, 2**32 - 1),
    "gradient_checkpointing": Param("bool"),
    "cache_latents": Param("bool"),
    "cache_latents_to_disk": Param("bool"),
    "cache_text_encoder_outputs": Param("bool"),
    "cache_text_encoder_outputs_to_disk": Param("bool"),
    "network_train_unet_only": Param("bool"),
    "masked_loss": Param("bool"),
    "fp8_base": Param("bool"),
    "full_bf16": Param("bool"),
    "sdpa": Param("bool"),
    "no_half_vae": Param("bool", scripts=("sdxl_train_network.py",)),
    "noise_offset": Param("float", 0.0, 1.0),
    "min_snr_gamma": Param("float", 0.0, 100.0),
    "max_grad_norm": Param("float", 0.0, 100.0),
    "clip_skip": Param("int", 1, 12, scripts=("train_network.py",)),
    "max_data_loader_n_workers": Param("int", 0, 64),
    "persistent_data_loader_workers": Param("bool"),
    "timestep_sampling": Param("choice", choices=TIMESTEP_SAMPLING, scripts=("flux_train_network.py",)),
    "discrete_flow_shift": Param("float", 0.0, 100.0, scripts=("flux_train_network.py",)),
    "model_prediction_type": Param("choice", choices=MODEL_PREDICTION, scripts=("flux_train_network.py",)),
    "guidance_scale": Param("float", 0.0, 100.0, scripts=("flux_train_network.py",)),
    "t5xxl_max_token_length": Param("int", 1, 512, scripts=("flux_train_network.py",)),
    # dataset (TOML) settings
    "resolution": Param("int", 64, 4096, target="dataset"),
    "train_batch_size": Param("int", 1, 64, target="dataset"),
    "num_repeats": Param("int", 1, 1000, target="dataset"),
}
# settings that are refused with a reason (sd-scripts would ignore or reject them)
REFUSED = {
    "reg_num_repeats": "sd-scripts v0.10.1 repeats regularization images itself to balance the character "
                       "images, whatever the reg subset's num_repeats says",
}
# options the builder itself sets; a preset may not set them either
RESERVED = {"dataset_config", "output_dir", "output_name", "logging_dir", "resume", "network_weights",
            "save_state", "console_log_simple", "pretrained_model_name_or_path", "clip_l", "t5xxl", "ae", "vae",
            "lr_scheduler_args", "alpha_mask", "train_data_dir", "reg_data_dir", "config_file", "output_config",
            "sample_prompts", "log_with", "wandb_api_key", "log_tracker_config", "network_args", "optimizer_args",
            "tokenizer_cache_dir", "skip_until_initial_step", "initial_step", "initial_epoch"}
# preset-only settings (fixed, not user-overridable)
PRESET_ONLY = {"save_model_as": Param("choice", choices=("safetensors",))}

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHELL_META = set(";|&$`<>(){}[]!*?~\"'\\\n\r\t\x00")


def check_job_name(name: str, *, input: str = "job_name") -> str:
    if not isinstance(name, str) or not JOB_NAME_RE.match(name.strip()) or ".." in name:
        raise ContinuityError(
            f"'{name}' is not a valid job name: use 1-64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit (no spaces, slashes or shell characters)", input=input)
    return name.strip()


def check_text(text: str, *, input: str, max_len: int = 300) -> str:
    """Caption-like text (token, class phrase): one line, printable, no control characters."""
    if not isinstance(text, str):
        raise ContinuityError("expected text", input=input)
    t = text.strip()
    if len(t) > max_len:
        raise ContinuityError(f"longer than {max_len} characters", input=input)
    if any(ord(c) < 32 or ord(c) == 127 for c in t):
        raise ContinuityError("must be a single line without control characters", input=input)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in t):
        raise ContinuityError("holds an invalid character (a lone surrogate)", input=input)
    return t


# ---------------------------------------------------------------- presets
@dataclass
class Preset:
    id: str
    title: str
    description: str
    script: str
    contract: str
    models: dict
    dataset: dict
    captions: dict
    args: dict
    path: str = ""


def list_presets(folder: str = PRESETS_DIR) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json") and not f.startswith("."))


def load_preset(preset_id: str, folder: str = PRESETS_DIR) -> Preset:
    if preset_id not in list_presets(folder):
        raise ContinuityError(f"unknown preset '{preset_id}'; available: {', '.join(list_presets(folder))}",
                              input="preset")
    path = os.path.join(folder, preset_id + ".json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        preset = Preset(id=data["id"], title=data.get("title", preset_id), description=data.get("description", ""),
                        script=data["script"], contract=data["script"],
                        models=data.get("models", {}), dataset=data.get("dataset", {}),
                        captions=data.get("captions", {}), args=data.get("args", {}), path=path)
    except (OSError, ValueError, KeyError) as exc:
        raise ContinuityError(f"preset file {path} is broken: {exc}", input="preset") from exc
    if preset.script not in NETWORK_MODULES:
        raise ContinuityError(f"preset '{preset_id}' names an unsupported script '{preset.script}'", input="preset")
    for key, value in preset.args.items():
        if key in RESERVED:
            raise ContinuityError(f"preset '{preset_id}' may not set '{key}' (the launcher sets it)", input="preset")
        if key in PRESET_ONLY:
            _coerce(key, value, PRESET_ONLY[key], preset.script, input="preset")
        elif key in OVERRIDABLE:
            _coerce(key, value, OVERRIDABLE[key], preset.script, input="preset")
        else:
            raise ContinuityError(f"preset '{preset_id}' sets '{key}', which is not on the allow-list", input="preset")
    return preset


# ---------------------------------------------------------------- overrides
def _coerce(name: str, value: Any, p: Param, script: str, *, input: str, extra_optimizers=()) -> Any:
    if (p.scripts and script not in p.scripts) or (p.target == "arg" and f"--{name}" not in contract(script)):
        raise ContinuityError(f"'{name}' does not apply to {script} (sd-scripts v0.10.1 has no such option there)",
                              input=input)
    if p.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise ContinuityError(f"'{name}' must be true or false, got {value!r}", input=input)
    if p.kind == "choice":
        choices = p.choices or NETWORK_MODULES.get(script, ())
        if name == "network_module":
            choices = NETWORK_MODULES.get(script, ())
        elif name == "optimizer_type":
            choices = OPTIMIZERS + tuple(o for o in extra_optimizers if o in EXTRA_OPTIMIZERS)
            if isinstance(value, str) and value in EXTRA_OPTIMIZERS and value not in choices:
                raise ContinuityError(
                    f"optimizer '{value}' needs a package that sd-scripts' requirements do not install; install it "
                    "in sd-scripts' environment and list it in \"extra_optimizers\" of <ComfyUI>/user/continuity/"
                    f"training.json. Available now: {', '.join(choices)}", input=input)
        if not isinstance(value, str) or value not in choices:
            raise ContinuityError(f"'{name}' = {value!r} is not allowed; choose one of: {', '.join(choices)}", input=input)
        return value
    if p.kind == "float_list":
        items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
        if not items or len(items) > 2:
            raise ContinuityError(f"'{name}' takes one or two numbers", input=input)
        return [_number(name, v, "float", p, input) for v in items]
    return _number(name, value, p.kind, p, input)


def _number(name, value, kind, p: Param, input):
    if isinstance(value, bool):
        raise ContinuityError(f"'{name}' must be a number, got {value!r}", input=input)
    try:
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            num: int | float = int(value) if not isinstance(value, str) else int(value.strip(), 10)
        else:
            num = float(value)
    except (TypeError, ValueError):
        raise ContinuityError(f"'{name}' must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}",
                              input=input) from None
    if isinstance(num, float) and not math.isfinite(num):
        raise ContinuityError(f"'{name}' must be finite", input=input)
    if p.lo is not None and num < p.lo or p.hi is not None and num > p.hi:
        raise ContinuityError(f"'{name}' = {num} is outside [{p.lo}, {p.hi}]", input=input)
    return num


def parse_overrides(text: str, *, input: str = "overrides") -> dict[str, Any]:
    """``key=value`` lines (or ``;``-free comma-less lines); '#' starts a comment. Values stay text."""
    out: dict[str, Any] = {}
    for raw in (text or "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ContinuityError(f"'{line}' is not a 'name = value' line", input=input)
        key, _, value = line.partition("=")
        key = key.strip().lstrip("-")
        _check_known(key, input)
        out[key] = value.strip()
    return out


def _check_known(key: str, input: str) -> None:
    if key in REFUSED:
        raise ContinuityError(f"'{key}' cannot be set: {REFUSED[key]}", input=input)
    if key not in OVERRIDABLE:
        raise ContinuityError(f"'{key}' cannot be overridden; allowed: {', '.join(sorted(OVERRIDABLE))}", input=input)


def resolve_settings(preset: Preset, overrides: dict | None, *, input: str = "overrides",
                     extra_optimizers: tuple | list = ()) -> tuple[dict, dict]:
    """Preset args and dataset settings with the user's overrides applied and checked.

    Everything sd-scripts v0.10.1 would refuse at start-up (or after loading the models) is
    refused here, before any file is written.
    """
    args = dict(preset.args)
    dataset = dict(preset.dataset)
    for key, value in (overrides or {}).items():
        key = str(key).lstrip("-")
        _check_known(key, input)
        p = OVERRIDABLE[key]
        v = _coerce(key, value, p, preset.script, input=input, extra_optimizers=extra_optimizers)
        if p.target == "dataset":
            dataset[{"train_batch_size": "batch_size"}.get(key, key)] = v
        else:
            args[key] = v
    # a value given once for the text encoders applies to each of them (SDXL has two)
    te = args.get("text_encoder_lr")
    if te is not None:
        n = len(preset.args.get("text_encoder_lr", te) or ())
        if preset.script == "sdxl_train_network.py":
            n = 2
        elif preset.script == "train_network.py":
            n = 1
        if len(te) == 1 and n == 2:
            args["text_encoder_lr"] = [te[0], te[0]]
        elif len(te) != n:
            raise ContinuityError(f"'text_encoder_lr' takes {n} value(s) for {preset.script}", input=input)
    # consistency rules of sd-scripts v0.10.1
    if args.get("lr_scheduler") == "constant" and float(args.get("lr_warmup_steps", 0) or 0) != 0:
        raise ContinuityError("lr_scheduler 'constant' cannot have lr_warmup_steps > 0 (sd-scripts refuses it); "
                              "use 'constant_with_warmup'", input=input)
    if "lr_end" in args and args.get("lr_scheduler") != "polynomial":
        args.pop("lr_end")  # only the polynomial schedule takes lr_end
    if "lr_end" in args and args["lr_end"] >= float(args.get("learning_rate", 1.0)):
        raise ContinuityError("lr_end must be smaller than learning_rate", input=input)
    if "max_train_epochs" in args and "max_train_steps" in (overrides or {}) and "max_train_epochs" not in (overrides or {}):
        args.pop("max_train_epochs")  # the user asked for a step count: epochs would take precedence
    if args.get("cache_text_encoder_outputs") and not args.get("network_train_unet_only"):
        raise ContinuityError("cache_text_encoder_outputs needs network_train_unet_only (text encoders that train "
                              "cannot have cached outputs)", input=input)
    if args.get("masked_loss") and not dataset.get("alpha_mask"):
        dataset["alpha_mask"] = True
    _check_sd_scripts_rules(args, dataset, input)
    return args, dataset


def _check_sd_scripts_rules(args: dict, dataset: dict, input: str) -> None:
    """Combinations sd-scripts v0.10.1 refuses, refused (or made consistent) up front."""
    if args.get("optimizer_type") == "Adafactor" and int(args.get("lr_warmup_steps", 0) or 0) > 0:
        raise ContinuityError("optimizer 'Adafactor' cannot have lr_warmup_steps > 0: sd-scripts stops with "
                              "'adafactor ... does not require num_warmup_steps' after loading the models; set "
                              "lr_warmup_steps = 0 (or choose another optimizer)", input=input)
    if args.get("full_bf16") and args.get("mixed_precision") != "bf16":
        raise ContinuityError("full_bf16 needs mixed_precision = bf16 (sd-scripts refuses it otherwise)", input=input)
    if args.get("persistent_data_loader_workers") and int(args.get("max_data_loader_n_workers", 1) or 0) == 0:
        args.pop("persistent_data_loader_workers")  # PyTorch refuses persistent workers without workers
    res = int(dataset.get("resolution", 1024))
    if res % 64:
        raise ContinuityError(f"resolution {res} must be a multiple of 64 (sd-scripts' bucket step)", input=input)
    if dataset.get("enable_bucket", True):
        # sd-scripts asserts min_bucket_reso <= resolution <= max_bucket_reso: keep the bounds around it
        dataset["min_bucket_reso"] = min(int(dataset.get("min_bucket_reso", max(64, res // 2))), res)
        dataset["max_bucket_reso"] = max(int(dataset.get("max_bucket_reso", res * 2)), res)


# ---------------------------------------------------------------- contract
_CONTRACT: dict | None = None


def contract(script: str) -> dict:
    global _CONTRACT
    if _CONTRACT is None:
        with open(CONTRACT_PATH, encoding="utf-8") as fh:
            _CONTRACT = json.load(fh)
    return _CONTRACT[script]


def check_against_contract(argv: list[str], script_contract: dict) -> None:
    """Every option spelled exactly as the parser has it; values fit type, choices and nargs."""
    i = 0
    seen = set()
    while i < len(argv):
        opt = argv[i]
        spec = script_contract.get(opt)
        if spec is None or not opt.startswith("--"):
            raise ContinuityError(f"internal: '{opt}' is not an option of sd-scripts v0.10.1")
        if opt in seen:
            raise ContinuityError(f"internal: option '{opt}' given twice")
        seen.add(opt)
        i += 1
        values = []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        nargs = spec["nargs"]
        if (nargs == 0 and values) or (nargs is None and len(values) != 1):
            raise ContinuityError(f"internal: '{opt}' got {len(values)} values (nargs={nargs})")
        for v in values:
            t = spec["type"]
            try:
                if t == "int":
                    int(v)
                elif t == "float" or t == "int_or_float":
                    float(v)
            except ValueError:
                raise ContinuityError(f"internal: '{opt}' value {v!r} is not {t}") from None
            if spec["choices"] and v not in spec["choices"]:
                raise ContinuityError(f"internal: '{opt}' value {v!r} not in {spec['choices']}")


# ---------------------------------------------------------------- build
def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


@dataclass
class BuiltCommand:
    argv: list[str]                 # [python, script, --opt, value, ...]
    args: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)


def model_file(path: str, roots: list[str], *, input: str, label: str) -> str:
    """A model file as ComfyUI resolves it: inside one of its model folders by name.

    Model folders belong to the server owner, so a symlink there is followed (ComfyUI lists and
    loads it the same way); the name itself must not climb out of the folder (no '..'), must
    exist and be a ``.safetensors`` file. Folders clients can write into (input, output, user)
    are confined with realpath elsewhere; a model path never points there.
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathError(f"choose the {label}", input=input)
    norm = os.path.normpath(os.path.abspath(path))
    inside = [r for r in (os.path.normpath(os.path.abspath(r)) for r in roots)
              if os.path.commonpath([norm, r]) == r and norm != r]
    if not inside:
        raise PathError(f"the {label} must be a file in ComfyUI's model folders", input=input)
    if not os.path.isfile(norm):
        raise PathError(f"the {label} '{os.path.basename(norm)}' does not exist", input=input)
    if not norm.lower().endswith(".safetensors"):
        raise PathError(f"the {label} must be a .safetensors file (got '{os.path.basename(norm)}')", input=input)
    return norm


def build_command(preset: Preset, overrides: dict | None, *, python: str, sd_scripts_root: str,
                  dataset_config: str, output_dir: str, output_name: str, models: dict[str, str],
                  model_roots: list[str], logging_dir: str | None = None,
                  network_weights: str | None = None, resume: str | None = None,
                  weight_roots: list[str] | None = None, tokenizer_cache_dir: str | None = None,
                  extra_optimizers: tuple | list = ()) -> BuiltCommand:
    """The full argument list for one training run.

    ``models`` maps the preset's model slots (``pretrained_model_name_or_path``, ``clip_l``, ...)
    to paths of ``.safetensors`` files in ``model_roots`` (ComfyUI's model folders).
    ``network_weights`` continues from a previous LoRA (inside ``weight_roots``, default the
    model roots); ``resume`` is a saved state folder: the run then skips the steps the state
    holds (``--skip_until_initial_step``) and ends at the original total, numbering its saves
    after the state's step. ``tokenizer_cache_dir`` is the server's tokenizer cache.
    """
    output_name = check_job_name(output_name, input="job_name")
    args, dataset = resolve_settings(preset, overrides, extra_optimizers=extra_optimizers)
    argv: list[str] = []
    unknown = set(models) - set(preset.models)
    if unknown:
        raise ContinuityError(f"preset '{preset.id}' has no model slot {sorted(unknown)}", input="preset")
    for slot, spec in preset.models.items():
        label = spec.get("label", slot)
        argv += [f"--{slot}", model_file(models.get(slot) or "", model_roots, input=slot, label=label)]
    if network_weights:
        argv += ["--network_weights", model_file(network_weights, weight_roots or model_roots,
                                                 input="network_weights", label="LoRA to continue from")]
    lr_end = args.pop("lr_end", None)
    for key, value in args.items():
        if value is False or value is None:
            continue
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv.append(f"--{key}")
            argv += [_fmt(v) for v in value]
        else:
            argv += [f"--{key}", _fmt(value)]
    if lr_end is not None:
        argv += ["--lr_scheduler_args", f"lr_end={_fmt(lr_end)}"]
    if dataset.get("alpha_mask"):
        argv.append("--alpha_mask")
    argv += ["--dataset_config", dataset_config, "--output_dir", output_dir, "--output_name", output_name,
             "--save_state", "--console_log_simple"]
    if logging_dir:
        argv += ["--logging_dir", logging_dir]
    if tokenizer_cache_dir:
        argv += ["--tokenizer_cache_dir", tokenizer_cache_dir]
    if resume:
        argv += ["--resume", resume, "--skip_until_initial_step"]
    check_against_contract(argv, contract(preset.contract))
    script = os.path.join(sd_scripts_root, preset.script)
    return BuiltCommand(argv=[python, script] + argv, args=args, dataset=dataset)
