"""Helpers for the workflow tests: user model files by name, inputs, tiny-model substitution."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FACES = REPO / "assets" / "faces"
EXAMPLES = REPO / "assets" / "examples"

# loader input name -> ComfyUI models subfolder
MODEL_INPUTS = {
    "ckpt_name": "checkpoints", "lora_name": "loras", "vae_name": "vae", "unet_name": "diffusion_models",
    "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
    "control_net_name": "controlnet", "upscale_model_name": "upscale_models",
    "base_model": "checkpoints", "ae": "vae", "clip_l": "text_encoders", "t5xxl": "text_encoders",
    "continue_from": "loras",
}

# (class type, input) pairs whose folder differs from MODEL_INPUTS
MODEL_INPUTS_BY_CLASS = {("CLIPVisionLoader", "clip_name"): "clip_vision"}

TINY_LOADERS = {"CheckpointLoaderSimple"}


def model_widget_names() -> set[str]:
    return set(MODEL_INPUTS)


def load_api(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    for node in data.values():
        node.get("_meta", {}).pop("note", None)
    return data


def provide_model_files(base: Path, prompt: dict) -> None:
    """Create the model files a workflow names (empty safetensors) so that validation finds them."""
    from safetensors.torch import save_file
    import torch
    for node in prompt.values():
        for key, value in node.get("inputs", {}).items():
            folder = MODEL_INPUTS_BY_CLASS.get((node["class_type"], key), MODEL_INPUTS.get(key))
            if folder and isinstance(value, str) and value and not value.startswith("("):
                target = base / "models" / folder / value
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    save_file({"continuity_placeholder": torch.zeros(1)}, str(target))


def provide_inputs(base: Path, prompt: dict) -> None:
    """Put what the workflows read from ComfyUI's input folder there: image files, image folders."""
    inp = base / "input"
    for node in prompt.values():
        inputs = node.get("inputs", {})
        if node["class_type"] == "LoadVideo" and isinstance(inputs.get("file"), str):
            dst = inp / inputs["file"]
            if not dst.exists():
                shutil.copy(EXAMPLES / Path(inputs["file"]).name, dst)
        if node["class_type"] in ("LoadImage", "LoadImageMask") and isinstance(inputs.get("image"), str):
            name = Path(inputs["image"]).name
            src = EXAMPLES / name if (EXAMPLES / name).exists() else FACES / name
            dst = inp / inputs["image"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                if src.exists():
                    shutil.copy(src, dst)
                else:
                    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).save(dst)
        folder = inputs.get("folder")
        if node["class_type"].startswith("Continuity") and isinstance(folder, str) and folder:
            dst = inp / folder
            if not dst.exists():
                dst.mkdir(parents=True)
                # the example folders of the workflows name the photos they expect in their _meta
                names = node.get("_meta", {}).get("example_files") or ["img1.jpg", "img2.jpg"]
                for name in names:
                    src = EXAMPLES / name if (EXAMPLES / name).exists() else FACES / name
                    shutil.copy(src, dst / name)


def runnable(path: Path) -> bool:
    """A workflow runs here unless it needs real weights that cannot be substituted by tiny ones, or
    character profiles another workflow makes first (its own test runs them in order)."""
    data = json.loads(Path(path).read_text())
    return not any(n.get("_meta", {}).get("needs_real_models") or n.get("_meta", {}).get("needs_profiles")
                   for n in data.values())


def for_tiny_models(prompt: dict) -> dict:
    """Swap checkpoint loaders for the tiny random-weight models (same outputs: MODEL, CLIP, VAE)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node["class_type"] in TINY_LOADERS:
            node["class_type"] = "ContinuityTestTinyModels"
            node["inputs"] = {"seed": 0, "inpaint_model": False}
        for key in ("width", "height"):
            if node["class_type"] == "EmptyLatentImage" and isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = 64
        if "target_size" in node.get("inputs", {}) and isinstance(node["inputs"]["target_size"], int):
            node["inputs"]["target_size"] = 128
        if node["class_type"] == "ContinuityTrainLoRA":
            # a job name of its own per run: jobs and LoRAs are never overwritten
            node["inputs"]["job_name"] = f"{node['inputs']['job_name']}_{uuid.uuid4().hex[:6]}"
    return prompt


def _norm(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    return float(v)   # the frontend writes 25.0 as 25


def signature(prompt: dict) -> list:
    """A comparable form of an API prompt that ignores node ids: class types, widget values, links."""
    ids = {nid: (n["class_type"], json.dumps({k: _norm(v) for k, v in sorted(n["inputs"].items())
                                              if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str))},
                                             sort_keys=True)) for nid, n in prompt.items()}
    out = []
    for nid, n in prompt.items():
        links = sorted((k, ids[v[0]][0], v[1]) for k, v in n["inputs"].items()
                       if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in ids)
        out.append((ids[nid][0], ids[nid][1], links))
    return sorted(out)


def configure_fake_trainer(base: Path, where: Path) -> None:
    """Point the server at the fake sd-scripts through <user>/continuity/training.json."""
    import sys
    sys.path.insert(0, str(REPO / "tests" / "support" / "fake_sdscripts"))
    import _fake_trainer
    root = _fake_trainer.install(str(where))
    cfg = base / "user" / "continuity" / "training.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"sd_scripts": root, "python": sys.executable}))


def ensure_dataset(server) -> None:
    """The training workflows read dataset 'my_character': make it with the dataset workflow."""
    if (server.base / "output" / "continuity" / "datasets" / "my_character").is_dir():
        return
    prompt = for_tiny_models(load_api(REPO / "example_workflows" / "api" / "dataset_preparation.json"))
    provide_inputs(server.base, prompt)
    server.run(prompt, timeout=600)
