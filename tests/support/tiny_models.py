"""Tiny random-weight MODEL, CLIP and VAE built from ComfyUI's own classes, for tests.

They go through ComfyUI's real sampling, text encoding and VAE code paths (KSampler, CLIPTextEncode,
VAEEncode/Decode, SetLatentNoiseMask, InpaintModelConditioning) in a fraction of a second on a CPU.
ComfyUI's layers skip weight initialisation, so every parameter is filled explicitly from a seeded
generator: the same seed gives the same models.
"""
from __future__ import annotations


import torch

CONTEXT_DIM = 64


def _fill(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            is_norm = "norm" in name or name.endswith(".gamma") or "ln" in name.split(".")[-2:][0]
            if p.ndim <= 1 and is_norm and name.endswith("weight"):
                p.fill_(1.0)
                continue
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


def tiny_model(seed: int = 0, in_channels: int = 4):
    import comfy.latent_formats
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models_base

    class TinySD(comfy.supported_models_base.BASE):
        unet_config = {
            "context_dim": CONTEXT_DIM,
            "model_channels": 32,
            "use_linear_in_transformer": False,
            "adm_in_channels": None,
            "use_temporal_attention": False,
        }
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
        latent_format = comfy.latent_formats.SD15
        memory_usage_factor = 1.0
        supported_inference_dtypes = [torch.float32]

    config = {
        "use_checkpoint": False, "image_size": 32, "in_channels": in_channels, "out_channels": 4,
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
        "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
        "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": CONTEXT_DIM, "num_heads": 2, "use_temporal_attention": False,
        "use_temporal_resblock": False, "dtype": torch.float32,
    }
    cfg = TinySD(config)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    _fill(model.diffusion_model, seed)
    model.diffusion_model.to(torch.float32)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_clip(seed: int = 0):
    import comfy.sd
    import comfy.sd1_clip

    textmodel_config = {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
        "dropout": 0.0, "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": CONTEXT_DIM,
        "torch_dtype": "float32", "vocab_size": 49408,
    }

    class TinyTextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                             textmodel_json_config=textmodel_config, return_projected_pooled=False)

    class TinyClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(device=device, dtype=torch.float32, model_options=model_options or {},
                             clip_model=TinyTextModel, **kwargs)

    class Target:
        clip = TinyClipModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer
        params = {}

    clip = comfy.sd.CLIP(target=Target(), model_options={"dtype": torch.float32})
    _fill(clip.cond_stage_model, seed + 1, scale=0.02)
    return clip


def tiny_vae(seed: int = 0):
    import comfy.sd
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD()
    _fill(taesd, seed + 2, scale=0.05)
    sd = dict(taesd.state_dict())  # keys "taesd_encoder.*", "taesd_decoder.*": comfy.sd.VAE knows them
    return comfy.sd.VAE(sd=sd)
