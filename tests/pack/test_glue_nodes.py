"""The nodes' shared ComfyUI glue (nodes/_glue.py): LoRA files read once into one bounded cache, and
the LoRA's metadata passed to ``load_lora_for_models`` where the running ComfyUI takes it (as its
LoraLoader does), the plain call where it does not (0.3.75)."""
from __future__ import annotations

import importlib

import pytest
import torch

pytestmark = pytest.mark.comfy


def test_lora_metadata_passed_where_the_core_takes_it(comfy, tmp_path, monkeypatch):
    glue = importlib.import_module(comfy.pack_module.__name__ + ".nodes._glue")
    core_sd = importlib.import_module("comfy.sd")
    core_utils = importlib.import_module("comfy.utils")
    from safetensors.torch import save_file
    path = tmp_path / "tiny.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(path), metadata={"ss_network_dim": "4"})
    reads = []
    real_load = core_utils.load_torch_file

    def counting_load(*args, **kwargs):
        reads.append(args[0])
        return real_load(*args, **kwargs)

    calls = []

    def newer_core(model, clip, lora, strength_model, strength_clip, lora_metadata=None):
        calls.append(("newer", lora_metadata, strength_model, strength_clip))
        return model, clip

    def core_0375(model, clip, lora, strength_model, strength_clip):
        calls.append(("0.3.75", sorted(lora), strength_model, strength_clip))
        return model, clip

    monkeypatch.setattr(core_utils, "load_torch_file", counting_load)
    glue.LORA_FILES.clear()
    try:
        monkeypatch.setattr(core_sd, "load_lora_for_models", newer_core)
        glue.lora_metadata_supported.cache_clear()
        assert glue.apply_lora("model", None, str(path), 0.5) == ("model", None)
        assert calls[-1] == ("newer", {"ss_network_dim": "4"}, 0.5, 0.5)
        monkeypatch.setattr(core_sd, "load_lora_for_models", core_0375)
        glue.lora_metadata_supported.cache_clear()
        glue.apply_lora("model", "clip", str(path), 0.8, 0.3)
        assert calls[-1] == ("0.3.75", ["lora_unet_x.alpha"], 0.8, 0.3)
        assert reads == [str(path)]                      # read once, from the one cache after that
        # bounded: the oldest file leaves the cache
        for i in range(glue.LORA_FILES.max_items + 1):
            other = tmp_path / f"other_{i}.safetensors"
            save_file({"a": torch.zeros(1)}, str(other))
            glue.apply_lora("model", None, str(other), 1.0)
        glue.apply_lora("model", None, str(path), 1.0)
        assert reads.count(str(path)) == 2
    finally:
        glue.lora_metadata_supported.cache_clear()
        glue.LORA_FILES.clear()
