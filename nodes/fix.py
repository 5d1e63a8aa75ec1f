"""Face-fix nodes: Crop For Inpaint, Two-Pass Inpaint, Paste Back, and the all-in-one Face Fix.

Thin adapters over ``continuity.fix`` (the pipeline, and its geometry: crop boxes, float Lanczos
resizing, paste-back) and ComfyUI's own sampling (``_glue.two_pass_inpaint``: ``common_ksampler``,
``InpaintModelConditioning``), so that previews, progress bars, interrupt, samplers and
schedulers behave as in KSampler.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.samplers

from ..continuity import limits
from ..continuity.errors import ContinuityError
from ..continuity.fix import FixSettings, IdentityGuard, fix_faces, geometry
from . import _common, _glue
from ._identity import CHARACTER_CHOICE, WHICH_TIP, CharacterChooser, character_input
from ._types import CATEGORY, FaceModel, Stitch
from ._types import Cast as CastType
from .cast import CAST_CHOICE, face_fix_with_cast

AREA = f"{CATEGORY}/face fix"


# --------------------------------------------------------------------------- shared inputs

def _crop_inputs():
    return [
        io.Float.Input("context", default=1.5, min=1.0, max=3.0, step=0.05,
                       tooltip="Side of the square crop = longest side of the mask's bounding box x this factor. "
                               "More context helps the model match the surroundings."),
        io.Int.Input("min_size", default=128, min=8, max=8192, step=8,
                     tooltip="Smallest crop side in frame pixels, so tiny faces still get some context."),
        io.Int.Input("target_size", default=1024, min=64, max=4096, step=64,
                     tooltip="Side of the crop after resizing (Lanczos), a multiple of 64. 1024 for SDXL/Flux, 512-768 for SD1.5."),
        io.Combo.Input("padding", options=list(geometry.PAD_MODES), default="edge",
                       tooltip="Where the square crosses the image border it is padded, never shifted, so the face "
                               "stays centred: edge repeats the border pixels, reflect mirrors the image."),
    ]


def _sampling_inputs():
    return [
        io.Model.Input("model", tooltip="The model for pass 1 (and pass 2 unless model_2 is given): your "
                                        "checkpoint with the character LoRA. Inpaint models (9 input channels) "
                                        "get ComfyUI's inpaint conditioning."),
        io.Conditioning.Input("positive", tooltip="Positive conditioning (the character's prompt)."),
        io.Conditioning.Input("negative", tooltip="Negative conditioning."),
        io.Vae.Input("vae", tooltip="The VAE that encodes the crop and decodes the result."),
    ]


def _sampler_settings():
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed; both passes use it."),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps of each pass."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                       tooltip="Sampler, as in KSampler."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                       tooltip="Scheduler, as in KSampler."),
        io.Float.Input("denoise_1", default=0.75, min=0.0, max=1.0, step=0.01,
                       tooltip="Pass 1 (masked inpaint): how much of the masked area is re-drawn. 0 skips pass 1."),
        io.Float.Input("denoise_2", default=0.40, min=0.0, max=1.0, step=0.01,
                       tooltip="Pass 2 (whole crop, no mask): low-denoise re-sample for coherence with the "
                               "surroundings. 0 skips pass 2."),
    ]


def _model_2_input():
    return io.Model.Input("model_2", optional=True,
                          tooltip="Optional model for pass 2 (e.g. the base checkpoint without the inpaint weights). "
                                  "Default: the pass-1 model.")


# --------------------------------------------------------------------------- nodes

class CropForInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityCropForInpaint",
            display_name="Crop For Inpaint (Continuity)",
            category=AREA,
            description=(
                "Crops a square around each image's mask (bounding box x context, at least min_size), padding "
                "instead of shifting at the image border so the face stays centred, and resizes it to "
                "target_size with Lanczos in float (no 8-bit rounding); the mask is resized with a smooth "
                "filter. Each image of a batch gets its own crop; an empty mask gives a crop of the whole "
                "image that Paste Back leaves untouched."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The frame(s) to fix."),
                io.Mask.Input("mask", tooltip="Where to inpaint (e.g. the face region): one mask, or one per image, "
                                              "the size of the image."),
                *_crop_inputs(),
            ],
            outputs=[
                io.Image.Output("crop", display_name="crop", tooltip="The square crops, target_size x target_size."),
                io.Mask.Output("crop_mask", display_name="crop_mask", tooltip="The mask of each crop."),
                Stitch.Output("stitch", display_name="stitch",
                              tooltip="Per image: the box, padding, scale and original size, for Paste Back."),
            ],
        )

    @classmethod
    def validate_inputs(cls, target_size, padding):
        bad = _common.validation_error(cls, {"target_size": target_size, "padding": padding})
        if bad is not True:
            return bad
        if isinstance(target_size, int) and target_size % 64:
            return str(_common.node_error(cls, "target_size", f"{target_size} is not a multiple of 64"))
        return True

    @classmethod
    @_common.reports_errors("mask")
    def execute(cls, image, mask, context, min_size, target_size, padding) -> io.NodeOutput:
        if target_size % 64:
            raise ContinuityError(f"target_size {target_size} is not a multiple of 64", input="target_size")
        b, h, w = (int(v) for v in image.shape[:3])
        limits.check_image((h, w), input="image", max_pixels=limits.MAX_WORK_PIXELS)
        limits.check_output(b, target_size, target_size, input="target_size", input_pixels=b * h * w)
        crops, cmasks, record = geometry.crop_for_inpaint(image, mask, context=context, min_size=min_size,
                                                          target=target_size, pad_mode=padding)
        return io.NodeOutput(torch.from_numpy(crops), torch.from_numpy(cmasks), record)


class TwoPassInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityTwoPassInpaint",
            display_name="Two-Pass Inpaint (Continuity)",
            category=AREA,
            description=(
                "Pass 1 encodes the crop and samples with the mask as noise mask (inpaint models get ComfyUI's "
                "InpaintModelConditioning); pass 2 re-samples the whole result without the mask at low denoise "
                "(about 0.40) for coherence with the surroundings; the decoded result is composited into the "
                "input crop with the mask. Uses ComfyUI's KSampler code, so previews, progress, interrupt and "
                "every sampler and scheduler work as usual. Image sides must be multiples of 8."
            ),
            inputs=[
                *_sampling_inputs(),
                io.Image.Input("image", tooltip="The crop(s) from Crop For Inpaint."),
                io.Mask.Input("mask", tooltip="The crop mask(s) from Crop For Inpaint."),
                *_sampler_settings(),
                _model_2_input(),
            ],
            outputs=[
                io.Image.Output("inpainted", display_name="image",
                                tooltip="The inpainted crops, composited into the input with the mask."),
                io.Latent.Output("latent", display_name="latent", tooltip="The latent after pass 2 (or pass 1)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler):
        return _common.validation_error(cls, {"sampler_name": sampler_name, "scheduler": scheduler})

    @classmethod
    @_common.reports_errors("image")
    def execute(cls, model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name, scheduler,
                denoise_1, denoise_2, model_2=None) -> io.NodeOutput:
        out, latent = _glue.two_pass_inpaint(model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name,
                                       scheduler, denoise_1, denoise_2, model_2)
        return io.NodeOutput(out, latent)


def _paste_inputs():
    return [
        io.Float.Input("feather", default=4.5, min=0.0, max=20.0, step=0.5,
                       tooltip="Blend width inside the mask edge, in per cent of the crop side (clamped to 1-64 frame "
                               "pixels). 0: hard edge."),
        io.Boolean.Input("colour_match", default=False,
                         tooltip="Shift the pasted colours by their mean difference to the original in the blend band."),
    ]


class PasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityPasteBack",
            display_name="Paste Back (Continuity)",
            category=AREA,
            description=(
                "Resizes each processed crop back to its size in the frame (exact inverse of the Lanczos "
                "upscale, or Lanczos), drops the padding and blends it into the original image only inside "
                "the original mask, feathered inward by a width proportional to the crop; pixels outside the "
                "mask stay exactly as they were. Images with an empty mask pass through unchanged."
            ),
            inputs=[
                Stitch.Input("stitch", tooltip="The stitch record from Crop For Inpaint."),
                io.Image.Input("image", tooltip="The processed crops, in the order Crop For Inpaint gave them."),
                *_paste_inputs(),
            ],
            outputs=[io.Image.Output("result", display_name="image", tooltip="The original frames with the crops pasted in.")],
        )

    @classmethod
    @_common.reports_errors("image")
    def execute(cls, stitch, image, feather, colour_match) -> io.NodeOutput:
        if not isinstance(stitch, geometry.StitchRecord) and not hasattr(stitch, "boxes"):
            raise ContinuityError("this is not a stitch record from Crop For Inpaint", input="stitch")
        out = geometry.paste_back(stitch, image, feather_percent=feather, colour_match=colour_match)
        return io.NodeOutput(torch.from_numpy(out))


class FaceFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFaceFix",
            display_name="Face Fix (Continuity)",
            category=AREA,
            description=(
                "The common case in one node: for every chosen face of every image, the face-region mask, a "
                "square crop upscaled to target_size with Lanczos, a masked inpaint pass, an unmasked low-denoise "
                "pass, and the paste back into the frame (feathered inside the mask; everything outside the mask "
                "stays bit-exact). Face k of the batch uses seed + k. Images without a face pass through. "
                "With a character connected, its latest LoRA is applied at lora_strength and, when clip is "
                "connected, the prompt starts with its trigger word and class phrase; which = character fixes "
                "only the face most like the character (the report gives its similarity)."
            ),
            inputs=[
                FaceModel.Input("face_model", tooltip="From Load Face Model (Continuity): finds and parses the faces."),
                io.Image.Input("image", tooltip="The frame(s) to fix; images of different sizes may come as a list."),
                io.Model.Input("model", tooltip="The model for pass 1 (and pass 2 unless model_2 is given): your "
                                                "checkpoint with the character LoRA (or connect a character: its "
                                                "latest LoRA is applied here). Inpaint models (9 input channels) "
                                                "get ComfyUI's inpaint conditioning."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Positive conditioning (the character's prompt). Leave it unconnected "
                                              "and connect clip to have the node encode 'prompt' instead (with a "
                                              "character: its trigger word and class phrase first)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the crop and decodes the result."),
                io.Combo.Input("which", options=["all", "largest", "most_confident", "index", CHARACTER_CHOICE,
                                                 CAST_CHOICE],
                               default="largest",
                               tooltip="Which faces of each image: all of them, the largest, the most confident, "
                                       "the one at 'index' (0 = largest), or " + WHICH_TIP + " Images without it "
                                       "pass through unchanged. cast: every face given to a member of the "
                                       "connected cast (by identity), each fixed with its member's LoRA and "
                                       "prompt; faces of nobody in the cast are left alone."),
                io.Int.Input("index", default=0, min=0, max=999, tooltip="Face index when 'which' is index."),
                io.String.Input("regions", default="face, ears, hair, beard",
                                tooltip="Regions to repaint, comma-separated: face (= skin, brows, eyes, nose, mouth), "
                                        "skin, brows, eyes, nose, mouth, ears, hair, beard, neck, glasses, hat."),
                io.Float.Input("grow", default=5.0, min=-50.0, max=100.0, step=0.5,
                               tooltip="Grow (> 0) or shrink (< 0) each face's mask, in per cent of its face box."),
                io.Int.Input("min_face", default=24, min=0, max=4096,
                             tooltip="Ignore faces smaller than this many pixels."),
                *_crop_inputs(),
                *_sampler_settings(),
                *_paste_inputs(),
                _model_2_input(),
                character_input("A character profile (Load Character): its latest LoRA is applied (lora_strength), "
                                "its trigger word and class phrase start the prompt (with clip), and which = "
                                "character fixes only its face (chosen by identity, at its threshold)."),
                io.Float.Input("lora_strength", default=0.8, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="Strength of the character's latest LoRA (from ComfyUI's loras folder) on the "
                                       "model, model_2 and clip; 0: none. Used only with a character."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The checkpoint's CLIP. When connected, the positive conditioning is encoded "
                                      "here from 'prompt' (with the character's LoRA applied to the CLIP too); "
                                      "leave positive unconnected then."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="Positive prompt text, encoded with clip. With a character, its trigger word "
                                        "and class phrase are put first unless the text already contains the "
                                        "trigger word."),
                CastType.Input("cast", optional=True,
                               tooltip="A cast (Make Cast / Load Cast), used when which is 'cast'."),
                io.Boolean.Input("keep_only_if_better", default=True, optional=True,
                                 tooltip="With which = character: the fixed face is scored against the character "
                                         "again, and where the fix lowered its similarity (or lost the face) the "
                                         "original image is kept. The report gives both similarities."),
            ],
            outputs=[
                io.Image.Output("fixed", display_name="image", is_output_list=False,
                                tooltip="The frames with their faces fixed, same sizes as the input."),
                io.Mask.Output("face_mask", display_name="mask", tooltip="The union of the face masks used, per image."),
                io.Int.Output("count", display_name="count", tooltip="Number of faces fixed."),
                io.String.Output("report", display_name="report",
                                 tooltip="What was done: the character, LoRA and prompt used, and per image the "
                                         "faces fixed (with which = character: the face chosen and its similarity)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, regions, target_size, which, padding, sampler_name, scheduler):
        from ..continuity.faces import masks as cmasks
        bad = _common.validation_error(cls, {"regions": regions, "target_size": target_size, "which": which,
                                             "padding": padding, "sampler_name": sampler_name, "scheduler": scheduler})
        if bad is not True:
            return bad
        if isinstance(target_size, int) and target_size % 64:
            return str(_common.node_error(cls, "target_size", f"{target_size} is not a multiple of 64"))
        try:
            if not cmasks.normalise_regions(regions):
                return str(_common.node_error(cls, "regions", "no region given; e.g. 'face, hair'"))
        except ContinuityError as exc:
            return str(_common.node_error(cls, "regions", exc.message))
        return True

    @classmethod
    @_common.reports_errors("image")
    def execute(cls, face_model, image, model, negative, vae, which, index, regions, grow, min_face,
                context, min_size, target_size, padding, seed, steps, cfg, sampler_name, scheduler, denoise_1,
                denoise_2, feather, colour_match, positive=None, model_2=None, character=None, lora_strength=0.8,
                clip=None, prompt="", keep_only_if_better=True, cast=None) -> io.NodeOutput:
        if not hasattr(face_model, "detect") or not hasattr(face_model, "parser"):
            raise ContinuityError("expects a face model from Load Face Model (Continuity)", input="face_model")
        if which == CAST_CHOICE:
            return _cast_fix(face_model, image, cast, model=model, model_2=model_2, positive=positive,
                             negative=negative, vae=vae, clip=clip, prompt=prompt or "", lora_strength=lora_strength,
                             settings=FixSettings(regions=regions, grow=grow, context=context, crop_min_size=min_size,
                                                  target_size=target_size, padding=padding, feather=feather,
                                                  colour_match=colour_match),
                             min_face=min_face, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                             scheduler=scheduler, denoise_1=denoise_1, denoise_2=denoise_2,
                             keep_only_if_better=keep_only_if_better)
        chooser = CharacterChooser(face_model, character, which)
        lines: list[str] = []
        model, model_2, positive = _glue.character_conditioning(chooser.char, model, model_2, positive, clip,
                                                           prompt or "", float(lora_strength), lines)
        lines += [n for n in (chooser.note(), chooser.identity_line()) if n]
        frames = [f.detach().cpu().float().numpy() for f in _common.split_images(image)]
        settings = FixSettings(regions=regions, grow=grow, context=context, crop_min_size=min_size,
                               target_size=target_size, padding=padding, feather=feather,
                               colour_match=colour_match)

        def detect(rgb, i):
            return [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]

        choose, before, per_image = _face_choice(chooser, which, index)
        guard = None
        if chooser.active:
            guard = IdentityGuard(chooser.identity(), chooser.emb, lambda rgb: detect(rgb, 0), min_face=min_face,
                                  enforce=bool(keep_only_if_better), setting="keep_only_if_better")
        inpaint = _glue.two_pass_inpainter(model, positive, negative, vae, seed=seed, steps=steps, cfg=cfg,
                                           sampler_name=sampler_name, scheduler=scheduler, denoise_1=denoise_1,
                                           denoise_2=denoise_2, model_2=model_2)
        res = fix_faces(frames, detect=detect, choose=choose, parser=face_model.parser, inpaint=inpaint,
                        settings=settings, guard=guard, before=lambda i: before.get(i, {}),
                        interrupted=_glue.throw_if_interrupted)
        guarded = [f.line() for f in res.faces if f.guarded]
        report = "\n".join(lines + per_image + guarded + [f"faces fixed: {res.count}"])
        sizes = {r.shape for r in res.images}
        if len(sizes) != 1:
            # images of different sizes cannot share a batch (ComfyUI runs lists per item)
            raise ContinuityError("the images have different sizes; send them as a list (one per run)", input="image")
        out = torch.stack([torch.from_numpy(r) for r in res.images])
        masks = torch.stack([torch.from_numpy(m) for m in res.masks])
        return io.NodeOutput(out, masks, res.count, report, ui={"continuity_text": [report]})


def _cast_fix(face_model, image, cast, **kw) -> io.NodeOutput:
    """Face Fix with which = cast (see nodes.cast.face_fix_with_cast)."""
    frames = [f.detach().cpu().float().numpy() for f in _common.split_images(image)]
    if len({f.shape for f in frames}) != 1:
        raise ContinuityError("the images have different sizes; send them as a list (one per run)", input="image")
    images, masks, count, lines = face_fix_with_cast(face_model, frames, cast, **kw)
    report = "\n".join(lines + [f"faces fixed: {count}"])
    return io.NodeOutput(torch.stack([torch.from_numpy(r) for r in images]),
                         torch.stack([torch.from_numpy(m) for m in masks]), count, report,
                         ui={"continuity_text": [report]})


def _face_choice(chooser, which: str, index: int):
    """(choose(rgb, faces, i), the similarities the choice worked out per image, report lines)."""
    from ..continuity.faces import masks as cmasks
    per_image: list[str] = []
    before: dict[int, dict[int, float | None]] = {}

    def choose(rgb, found, i):
        if not chooser.active:
            chosen = cmasks.select_faces(found, which, index) if found else []
            per_image.append(f"image {i}: {len(found)} face(s), {len(chosen)} chosen ({which})")
            return chosen
        match = chooser.match(rgb, found, i)
        per_image.append(match.describe(i) + ("" if match.chosen is not None else "; passed through unchanged"))
        if match.chosen is None:
            return []
        before[i] = {id(match.chosen): match.best_similarity}
        return [match.chosen]

    return choose, before, per_image


NODES = [CropForInpaint, TwoPassInpaint, PasteBack, FaceFix]
