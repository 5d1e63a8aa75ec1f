"""Training core: command lines against the sd-scripts v0.10.1 contract, allow-lists, dataset TOML."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from continuity.errors import ContinuityError, PathError
from continuity import imageio
from continuity.training import (OVERRIDABLE, build_command, create_job, list_presets, load_preset,
                                 load_sd_scripts, parse_overrides)
from continuity.training import config as tconfig
from continuity.training import dataset as tds
from continuity.training.progress import LineSplitter, parse_line

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support" / "fake_sdscripts"))
import _fake_trainer

CONTRACT = json.loads((Path(__file__).resolve().parents[1] / "data" / "sdscripts_contract_v0.10.1.json").read_text())
SUBSET_KEYS = {"image_dir", "is_reg", "alpha_mask", "class_tokens", "caption_extension", "num_repeats"}


# ------------------------------------------------------------------ contract checker (independent)
def contract_check(argv: list[str], script: str) -> dict:
    """Parse like argparse would, from the contract, but with exact option strings only."""
    spec = CONTRACT[script]
    conv = {"int": int, "float": float, "str": str, "Path": str, "int_or_float": float, None: str}
    parsed = {}
    i = 0
    while i < len(argv):
        opt = argv[i]
        assert opt in spec, f"{opt} is not an exact option of {script}"
        s = spec[opt]
        i += 1
        vals = []
        while i < len(argv) and not argv[i].startswith("--"):
            vals.append(argv[i])
            i += 1
        if s["nargs"] == 0:
            assert vals == [], f"{opt} is a flag"
            parsed[s["dest"]] = s["const"]
            continue
        if s["nargs"] is None:
            assert len(vals) == 1, f"{opt} takes one value, got {vals}"
        elif s["nargs"] == "*":
            pass
        else:
            assert len(vals) == int(s["nargs"]), opt
        out = [conv[s["type"]](v) for v in vals]  # raises on a bad type
        if s["choices"]:
            for v in out:
                assert v in s["choices"], f"{opt}={v} not in {s['choices']}"
        assert s["dest"] not in parsed, f"{opt} given twice"
        parsed[s["dest"]] = out if s["nargs"] == "*" else out[0]
    return parsed


def argparse_check(argv, script):
    """A second check: argparse itself, built from the contract, abbreviations off."""
    spec = CONTRACT[script]
    p = argparse.ArgumentParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    conv = {"int": int, "float": float, "str": str, "Path": str, "int_or_float": float}
    for opt, s in spec.items():
        if s["dest"] == "help":
            continue
        if s["nargs"] == 0:
            p.add_argument(opt, action="store_const", const=s["const"])
        else:
            kw = {}
            if s["type"]:
                kw["type"] = conv[s["type"]]
            if s["choices"]:
                kw["choices"] = s["choices"]
            if s["nargs"] is not None:
                kw["nargs"] = s["nargs"]
            p.add_argument(opt, **kw)
    ns, unknown = p.parse_known_args(argv)
    assert unknown == [], unknown
    return ns


@pytest.fixture()
def fake_sd(tmp_path):
    return _fake_trainer.install(str(tmp_path / "sd-scripts"))


@pytest.fixture()
def models(tmp_path):
    root = tmp_path / "models"
    files = {"pretrained_model_name_or_path": "checkpoints/base.safetensors", "clip_l": "text_encoders/clip_l.safetensors",
             "t5xxl": "text_encoders/t5xxl_fp16.safetensors", "ae": "vae/ae.safetensors"}
    out = {}
    for slot, rel in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 16)
        out[slot] = str(p)
    (root / "checkpoints" / "old.ckpt").write_bytes(b"\0")
    (root / "loras").mkdir()
    return root, out


def _build(preset_id, models, overrides=None, **kw):
    root, files = models
    p = load_preset(preset_id)
    return build_command(p, overrides, python="/venv/bin/python", sd_scripts_root="/opt/sd-scripts",
                         dataset_config="/jobs/j/dataset.toml", output_dir="/jobs/j/out", output_name="j",
                         models={k: files[k] for k in p.models}, model_roots=[str(root)], **kw)


def test_presets_present_and_paper_values():
    assert {"sdxl_realistic", "flux_animated", "shot_type"} <= set(list_presets())
    sdxl = load_preset("sdxl_realistic")
    assert sdxl.dataset["resolution"] == 1024 and sdxl.args["text_encoder_lr"] == [1e-6, 1e-6]
    assert sdxl.args["unet_lr"] == 1e-6 and sdxl.args["network_dim"] == 64 and "network_alpha" in sdxl.args
    assert 400 <= sdxl.args["max_train_epochs"] <= 600 and sdxl.captions["uses_reg"]
    assert not sdxl.args.get("cache_text_encoder_outputs")  # text encoders train
    flux = load_preset("flux_animated")
    assert flux.args["network_module"] == "networks.lora_flux" and flux.args["lr_scheduler"] == "polynomial"
    assert flux.args["lr_warmup_steps"] == 100 and flux.args["lr_scheduler_power"] == 0.8
    assert flux.args["lr_end"] == 4e-7 and flux.args["network_train_unet_only"] and 16 <= flux.args["network_dim"] <= 32
    assert set(flux.models) == {"pretrained_model_name_or_path", "clip_l", "t5xxl", "ae"}
    shot = load_preset("shot_type")
    assert shot.dataset["resolution"] == 512 and not shot.captions["needs_token"]
    assert set(shot.captions["shots"]) == {"close", "medium", "long"}


@pytest.mark.parametrize("preset_id", ["sdxl_realistic", "flux_animated", "shot_type"])
def test_preset_command_matches_contract(preset_id, models):
    built = _build(preset_id, models)
    p = load_preset(preset_id)
    assert built.argv[:2] == ["/venv/bin/python", f"/opt/sd-scripts/{p.script}"]
    parsed = contract_check(built.argv[2:], p.contract)
    ns = argparse_check(built.argv[2:], p.contract)
    for must in ("save_state", "console_log_simple"):
        assert parsed[must] is True
    assert parsed["dataset_config"] == "/jobs/j/dataset.toml" and ns.output_name == "j"
    assert parsed["network_alpha"] == float(p.args["network_alpha"])  # set explicitly, never the default 1
    if preset_id == "sdxl_realistic":
        assert parsed["text_encoder_lr"] == [1e-6, 1e-6] and parsed["masked_loss"] and parsed["alpha_mask"]
        assert parsed["cache_latents"] and parsed["gradient_checkpointing"] and parsed["mixed_precision"] == "bf16"
        assert "cache_text_encoder_outputs" not in parsed
    if preset_id == "flux_animated":
        assert parsed["lr_scheduler_args"] == ["lr_end=4e-07"] and parsed["lr_scheduler_power"] == 0.8
        assert parsed["ae"].endswith("ae.safetensors") and parsed["network_train_unet_only"]
        assert "text_encoder_lr" not in parsed
    if preset_id == "shot_type":
        assert parsed["text_encoder_lr"] == [5e-5]
        # only options train_network.py (SD 1.x) shares with the SDXL parser
        assert not {"cache_text_encoder_outputs", "no_half_vae"} & set(parsed)


OVERRIDE_CASES = [
    ("sdxl_realistic", {"learning_rate": "2e-6", "text_encoder_lr": "3e-6", "network_dim": "32", "network_alpha": 16,
                        "max_train_epochs": 400, "optimizer_type": "Prodigy", "lr_scheduler": "cosine",
                        "lr_warmup_steps": "10", "seed": 7, "gradient_checkpointing": "false", "resolution": 768,
                        "train_batch_size": 2, "noise_offset": 0.05}),
    ("flux_animated", {"network_dim": 32, "learning_rate": 1e-4, "max_train_steps": 2000, "lr_end": "1e-7",
                       "timestep_sampling": "flux_shift", "guidance_scale": "3.5", "fp8_base": False}),
    ("shot_type", {"max_train_epochs": 10, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 50,
                   "clip_skip": 2, "mixed_precision": "no"}),
]


@pytest.mark.parametrize("preset_id,overrides", OVERRIDE_CASES)
def test_overrides_match_contract(preset_id, overrides, models):
    built = _build(preset_id, models, overrides)
    p = load_preset(preset_id)
    parsed = contract_check(built.argv[2:], p.contract)
    argparse_check(built.argv[2:], p.contract)
    for key, value in overrides.items():
        if OVERRIDABLE[key].target == "dataset":
            key = {"train_batch_size": "batch_size"}.get(key, key)
            assert built.dataset[key] == int(value)
        elif key == "lr_end":
            assert parsed["lr_scheduler_args"] == [f"lr_end={float(value)!r}"]
        elif key == "text_encoder_lr":
            assert parsed[key] == [float(value)] * (2 if p.script == "sdxl_train_network.py" else 1)
        elif OVERRIDABLE[key].kind == "bool":
            assert parsed.get(key, False) is (str(value).lower() == "true")
        else:
            assert parsed[key] == type(parsed[key])(value)


def test_all_overridable_names_exist_in_contract():
    for name, p in OVERRIDABLE.items():
        if p.target != "arg":
            continue
        scripts = p.scripts or ("sdxl_train_network.py", "flux_train_network.py")
        for s in scripts:
            s = "sdxl_train_network.py" if s == "train_network.py" else s
            assert f"--{name}" in CONTRACT[s], (name, s)


@pytest.mark.parametrize("overrides,needle", [
    ({"network_module": "networks.evil"}, "network_module"),
    ({"network_module": "networks.lora_flux"}, "network_module"),   # flux module on SDXL
    ({"optimizer_type": "torch.optim.SGD"}, "optimizer_type"),
    ({"optimizer_type": "AdamW; rm -rf /"}, "optimizer_type"),
    ({"lr_scheduler": "cosine && curl x"}, "lr_scheduler"),
    ({"lr_scheduler": "constant", "lr_warmup_steps": 5}, "warmup"),
    ({"sample_prompts": "/etc/passwd"}, "cannot be overridden"),
    ({"network_args": "conv_dim=4"}, "cannot be overridden"),
    ({"output_dir": "/tmp"}, "cannot be overridden"),
    ({"network_dim": "64; touch /tmp/x"}, "integer"),
    ({"learning_rate": "nan"}, "finite"),
    ({"learning_rate": 5}, "outside"),
    ({"text_encoder_lr": "1e-6 1e-6 1e-6"}, "one or two"),
    ({"guidance_scale": 1.0}, "does not apply"),
])
def test_refused_overrides(models, overrides, needle):
    with pytest.raises(ContinuityError) as err:
        _build("sdxl_realistic", models, overrides)
    assert needle in str(err.value)


def test_parse_overrides_text():
    got = parse_overrides("# comment\nlearning_rate = 2e-6\n--network_dim=32  # rank\n\n")
    assert got == {"learning_rate": "2e-6", "network_dim": "32"}
    with pytest.raises(ContinuityError, match="cannot be overridden"):
        parse_overrides("pretrained_model_name_or_path=/etc/passwd")
    with pytest.raises(ContinuityError, match="name = value"):
        parse_overrides("--xformers")


def test_model_paths_confined_and_safetensors_only(models, tmp_path):
    root, files = models
    p = load_preset("sdxl_realistic")
    kw = dict(python="py", sd_scripts_root="/sd", dataset_config="/d.toml", output_dir="/o", output_name="j",
              model_roots=[str(root)])
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"0")
    for bad, msg in ((str(outside), "model folders"),
                     (str(root / "checkpoints" / ".." / ".." / "elsewhere.safetensors"), "model folders"),
                     (str(root / "checkpoints" / "old.ckpt"), ".safetensors"),
                     (str(root / "checkpoints" / "missing.safetensors"), "does not exist")):
        with pytest.raises(PathError) as err:
            build_command(p, None, models={"pretrained_model_name_or_path": bad}, **kw)
        assert msg in str(err.value) and err.value.input == "pretrained_model_name_or_path"
    with pytest.raises(ContinuityError, match="choose the SDXL checkpoint"):
        build_command(p, None, models={}, **kw)
    # a symlink inside a model folder is followed, as ComfyUI does (model folders are the owner's)
    link = root / "checkpoints" / "linked.safetensors"
    link.symlink_to(outside)
    built = build_command(p, None, models={"pretrained_model_name_or_path": str(link)}, **kw)
    assert built.argv[built.argv.index("--pretrained_model_name_or_path") + 1] == str(link)
    # network_weights: continue from a previous LoRA
    lora = root / "loras" / "prev.safetensors"
    lora.write_bytes(b"0")
    built = build_command(p, None, models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                          network_weights=str(lora), **kw)
    assert contract_check(built.argv[2:], "sdxl_train_network.py")["network_weights"] == str(lora)
    with pytest.raises(PathError):
        build_command(p, None, models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                      network_weights=str(outside), **kw)


@pytest.mark.parametrize("name", ["../escape", "a/b", "x;rm -rf ~", "$(id)", "job name", "`id`", "", ".hidden",
                                  "a|b", "-rf"])
def test_job_name_shell_and_traversal_refused(models, name):
    with pytest.raises(ContinuityError) as err:
        build_command(
            load_preset("sdxl_realistic"), None, python="py", sd_scripts_root="/sd", dataset_config="/d",
            output_dir="/o", output_name=name, models={"pretrained_model_name_or_path": models[1]["pretrained_model_name_or_path"]},
            model_roots=[str(models[0])])
    assert err.value.input == "job_name"


# ------------------------------------------------------------------ dataset writer
def _images(n, size=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((size[1], size[0], 3)).astype(np.float32) for _ in range(n)]


def test_dataset_rgba_alpha_is_mask_and_toml_rules(tmp_path, models):
    root, files = models
    imgs = _images(3)
    masks = []
    for i in range(3):
        m = np.zeros((80, 96), np.float32)
        m[10:50, 20 + i:60] = 1.0  # 1 = the character: train here
        masks.append(m)
    reg = _images(2, seed=5)
    job = create_job(jobs_root=str(tmp_path / "jobs"), loras_root=str(root / "loras"), job_name="anna",
                     preset=load_preset("sdxl_realistic"), overrides={"num_repeats": 3}, python="py",
                     sd_scripts_root="/sd", models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                     model_roots=[str(root)], images=imgs, masks=masks, captions=["smiling", "", "in a red coat"],
                     reg_images=reg, token="ohwx", class_phrase="woman")
    jd = Path(job.job_dir)
    pngs = sorted((jd / "img").glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGBA" and im.size == (96, 80)
        rgba = np.asarray(im)
    assert np.array_equal(rgba[..., 3], (masks[0] * 255).astype(np.uint8))
    assert np.abs(rgba[..., :3].astype(int) - (imgs[0] * 255 + 0.5).astype(int)).max() <= 1
    # what ComfyUI's LoadImage (and our loader) reads back: MASK = 1 - alpha = 1 - our mask
    _, loaded_mask = imageio.load_image(str(pngs[0]))
    assert np.allclose(loaded_mask, 1.0 - masks[0], atol=1 / 255)
    caps = [(jd / "img" / f"{i:04d}.txt").read_text().strip() for i in (1, 2, 3)]
    assert caps == ["ohwx woman, smiling", "ohwx woman", "ohwx woman, in a red coat"]
    regs = sorted((jd / "reg").glob("*.png"))
    assert len(regs) == 2 and (jd / "reg" / "reg_0001.txt").read_text().strip() == "woman"
    with Image.open(regs[0]) as im:
        assert im.mode == "RGBA" and np.asarray(im)[..., 3].min() == 255
    cfg = tomllib.loads((jd / "dataset.toml").read_text())
    assert len(cfg["datasets"]) == 1, "reg subset must share the [[datasets]] block"
    subsets = cfg["datasets"][0]["subsets"]
    assert cfg["datasets"][0]["resolution"] == 1024
    for s in subsets:
        assert set(s) <= SUBSET_KEYS, set(s) - SUBSET_KEYS
        assert s["alpha_mask"] is True and "conditioning_data_dir" not in s
        assert os.path.isdir(s["image_dir"])
    char, regsub = subsets
    assert not char.get("is_reg") and char["num_repeats"] == 3 and regsub["is_reg"] is True
    assert Path(char["image_dir"]) == jd / "img" and Path(regsub["image_dir"]) == jd / "reg"
    saved = json.loads((jd / "job.json").read_text())
    assert saved["argv"] == job.argv and saved["preset"] == "sdxl_realistic"
    # steps as sd-scripts counts them: 3 images x 3 repeats + as many reg samples, 500 epochs
    assert job.total_steps == (3 * 3 + 3 * 3) * 500
    # never overwritten: same name again is refused, nothing changed
    before = pngs[0].read_bytes()
    with pytest.raises(ContinuityError, match="already exists"):
        create_job(jobs_root=str(tmp_path / "jobs"), loras_root=str(root / "loras"), job_name="anna",
                   preset=load_preset("sdxl_realistic"), overrides=None, python="py", sd_scripts_root="/sd",
                   models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                   model_roots=[str(root)], images=_images(1), token="ohwx", class_phrase="woman")
    assert pngs[0].read_bytes() == before


def test_dataset_loadimage_masks_grey_rgba_and_errors(tmp_path):
    settings = {"resolution": 512, "alpha_mask": True, "caption_extension": ".txt"}
    cfg = {"template": "{caption}", "uses_reg": True}
    grey = np.full((40, 50), 0.5, np.float32)
    rgba = np.dstack([_images(1, (50, 40))[0], np.ones((40, 50), np.float32)])
    lmask = np.zeros((40, 50), np.float32)
    lmask[:20] = 1.0  # LoadImage: 1 = transparent
    out = tmp_path / "ds"
    out.mkdir()
    tds.write_dataset(str(out), str(out), images=[grey, rgba], masks=[lmask, lmask], captions=["a", "b"],
                      settings=settings, captions_cfg=cfg, mask_is_loadimage=True)
    a = np.asarray(Image.open(out / "img" / "0001.png"))
    assert a.shape == (40, 50, 4) and a[:20, :, 3].max() == 0 and a[20:, :, 3].min() == 255
    for kwargs, inp in (({"images": []}, "images"),
                        ({"images": _images(3), "masks": [grey, grey]}, "masks"),
                        ({"images": _images(2), "captions": ["a", "b", "c"]}, "captions"),
                        ({"images": [np.zeros((4, 4, 3))]}, "images"),
                        ({"images": [np.full((20, 20, 3), np.nan)]}, "images"),
                        ({"images": _images(1), "reg_images": _images(1)}, "class_phrase")):
        d = tmp_path / f"bad{inp}{len(os.listdir(tmp_path))}"
        d.mkdir()
        with pytest.raises(ContinuityError) as err:
            tds.write_dataset(str(d), str(d), settings=settings, captions_cfg=cfg, **kwargs)
        assert err.value.input == inp


def test_shot_type_captions_no_token(tmp_path, models):
    root, files = models
    job = create_job(jobs_root=str(tmp_path / "jobs"), loras_root=str(root / "loras"), job_name="shot_close",
                     preset=load_preset("shot_type"), overrides=None, python="py", sd_scripts_root="/sd",
                     models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                     model_roots=[str(root)], images=_images(2), captions=["a man on a bridge", ""], shot="close")
    jd = Path(job.job_dir)
    assert (jd / "img" / "0001.txt").read_text().strip() == "a high-quality close-up picture of a man on a bridge"
    assert (jd / "img" / "0002.txt").read_text().strip() == "a high-quality close-up picture"
    cfg = tomllib.loads((jd / "dataset.toml").read_text())
    assert cfg["datasets"][0]["resolution"] == 512 and len(cfg["datasets"][0]["subsets"]) == 1
    with pytest.raises(ContinuityError) as err:
        create_job(jobs_root=str(tmp_path / "jobs"), loras_root=str(root / "loras"), job_name="shot_x",
                   preset=load_preset("shot_type"), overrides=None, python="py", sd_scripts_root="/sd",
                   models={"pretrained_model_name_or_path": files["pretrained_model_name_or_path"]},
                   model_roots=[str(root)], images=_images(1), shot="extreme")
    assert err.value.input == "shot"


def test_toml_strings_are_escaped():
    text = tds.dataset_toml({"caption_extension": ".txt"}, {"resolution": 512},
                            [{"image_dir": 'C:\\data\\"quoted"\nnew', "class_tokens": "ünï ☃", "num_repeats": 1}])
    parsed = tomllib.loads(text)
    assert parsed["datasets"][0]["subsets"][0]["image_dir"] == 'C:\\data\\"quoted"\nnew'
    assert parsed["datasets"][0]["subsets"][0]["class_tokens"] == "ünï ☃"
    with pytest.raises(ValueError):
        tds.dataset_toml({}, {}, [{"image_dir": "x", "conditioning_data_dir": "y"}])


# ------------------------------------------------------------------ progress parsing
def test_progress_parser_real_tqdm_output():
    from tqdm import tqdm
    import io
    buf = io.StringIO()
    bar = tqdm(range(40), desc="steps", file=buf, mininterval=0, smoothing=0)
    for i in range(40):
        bar.update(1)
        bar.set_postfix(avr_loss=0.5 / (i + 1))
    bar.close()
    lines = LineSplitter().feed(buf.getvalue() + "\n")
    evs = [parse_line(l) for l in lines]
    steps = [e for e in evs if e and e.kind == "step"]
    assert steps[-1].step == 40 and steps[-1].total == 40
    assert steps[-1].loss == pytest.approx(0.5 / 40, rel=1e-2)
    assert parse_line("steps:  12%|█▏        | 120/1000 [1:01:23<10:10, 3.21s/it, avr_loss=1.2e-05]").to_dict() == {
        "kind": "step", "step": 120, "total": 1000, "loss": 1.2e-05, "elapsed_s": 3683.0, "eta_s": 610.0,
        "rate": "3.21s/it", "epoch": None, "epochs": None, "checkpoint": None}
    assert parse_line("steps:   0%|          | 0/1000 [00:00<?, ?it/s]").eta_s is None
    assert parse_line("INFO epoch 3/500").epochs == 500
    assert parse_line("saving checkpoint: /a/b-000050.safetensors").checkpoint == "/a/b-000050.safetensors"
    assert parse_line("some other log line") is None
    sp = LineSplitter()
    assert sp.feed("steps:  1%|") == [] and sp.feed("| 1/100 [00:01<01:39, 1.00it/s]\rnext") == [
        "steps:  1%|| 1/100 [00:01<01:39, 1.00it/s]"]
    assert sp.flush() == ["next"]


# ------------------------------------------------------------------ configuration
def test_sd_scripts_config(tmp_path, fake_sd):
    py = sys.executable
    with pytest.raises(tconfig.SdScriptsNotConfigured, match="not configured"):
        load_sd_scripts(str(tmp_path / "user"), env={})
    with pytest.raises(tconfig.SdScriptsNotConfigured, match="does not exist"):
        load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": str(tmp_path / "nope")})
    sd = load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": fake_sd, "CONTINUITY_SD_SCRIPTS_PYTHON": py})
    assert sd.version == "v0.10.1" and sd.python == py
    # the JSON file in ComfyUI's user folder
    user = tmp_path / "user"
    (user / "continuity").mkdir(parents=True)
    (user / "continuity" / "training.json").write_text(json.dumps({"sd_scripts": fake_sd, "python": py}))
    assert load_sd_scripts(str(user), env={}).root == os.path.realpath(fake_sd)
    # wrong version
    tag = Path(fake_sd) / ".git" / "refs" / "tags" / "v0.10.1"
    tag.rename(tag.with_name("v0.9.1"))
    with pytest.raises(tconfig.SdScriptsNotConfigured, match="v0.9.1.*v0.10.1"):
        load_sd_scripts(str(user), env={})
    # packed-refs with an annotated (peeled) tag
    (Path(fake_sd) / ".git" / "packed-refs").write_text(
        "# pack-refs with: peeled\nffffffffffffffffffffffffffffffffffffffff refs/tags/v0.10.1\n"
        "^0123456789abcdef0123456789abcdef01234567\n")
    assert load_sd_scripts(str(user), env={}).version == "v0.10.1"
    with pytest.raises(tconfig.SdScriptsNotConfigured, match="not executable|does not exist"):
        load_sd_scripts(None, env={"CONTINUITY_SD_SCRIPTS": fake_sd, "CONTINUITY_SD_SCRIPTS_PYTHON": str(tmp_path / "py")})
