"""Test-only ComfyUI node pack: tiny random-weight MODEL, CLIP, VAE and CLIP vision models, and a
stand-in face model (never shipped to users).

The tests link this folder into the test ComfyUI's custom_nodes beside Continuity, so graphs can
run real sampling without any downloaded weights.
"""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import tiny_models


@functools.lru_cache(maxsize=4)
def _models(seed: int, inpaint: bool):
    return (tiny_models.tiny_model(seed, in_channels=9 if inpaint else 4),
            tiny_models.tiny_clip(seed), tiny_models.tiny_vae(seed))


class ContinuityTestTinyModels:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                             "inpaint_model": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed, inpaint_model):
        return _models(seed, inpaint_model)


class ContinuityTestCentreFaceModel:
    """A CONTINUITY_FACE_MODEL whose face is the centre of any image (tests/support/fake_face_model.py)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CONTINUITY_FACE_MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        import fake_face_model
        return (fake_face_model.CentreFaceModel(),)


@functools.lru_cache(maxsize=4)
def _clip_vision(config: str, seed: int):
    import tempfile

    import comfy.clip_vision
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        fh.write(config)
    try:
        cv = comfy.clip_vision.ClipVisionModel(fh.name)
    finally:
        os.unlink(fh.name)
    tiny_models._fill(cv.model, seed, scale=0.05)
    return cv


class ContinuityTestTinyClipVision:
    """A random-weight CLIP_VISION built from ComfyUI's ClipVisionModel with the given config JSON."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"config": ("STRING", {"default": "{}", "multiline": True}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, config, seed):
        return (_clip_vision(config, seed),)


NODE_CLASS_MAPPINGS = {"ContinuityTestTinyModels": ContinuityTestTinyModels,
                       "ContinuityTestCentreFaceModel": ContinuityTestCentreFaceModel,
                       "ContinuityTestTinyClipVision": ContinuityTestTinyClipVision}
