"""Face-fix nodes: Crop For Inpaint, Two-Pass Inpaint, Paste Back, and the all-in-one Face Fix.

Thin adapters over ``continuity.geometry`` (crop boxes, float Lanczos resizing, paste-back) and
ComfyUI's own sampling (``nodes.common_ksampler``, ``nodes.InpaintModelConditioning``), so that
previews, progress bars, interrupt, samplers and schedulers behave as in KSampler.
"""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.samplers

from ..continuity import geometry, limits
from ..continuity.character.prompting import with_character
from ..continuity.errors import ContinuityError
from . import _common
from ._identity import CHARACTER_CHOICE, WHICH_TIP, CharacterChooser, character_input
from ._types import CATEGORY, FaceModel, Stitch

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


# --------------------------------------------------------------------------- two-pass sampling

def _is_inpaint_model(model) -> bool:
    inner = getattr(model, "model", None)
    return len(getattr(inner, "concat_keys", ()) or ()) > 0


def _check_sizes(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ContinuityError(f"expected an IMAGE batch (B, H, W, 3), got shape {tuple(image.shape)}", input="image")
    image = image[..., :3]
    b, h, w = image.shape[:3]
    if h % 8 or w % 8:
        raise ContinuityError(f"the image is {w}x{h}; both sides must be multiples of 8 for the VAE "
                              "(use Crop For Inpaint (Continuity), whose crops are multiples of 64)", input="image")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ContinuityError(f"expected a MASK batch (B, H, W), got shape {tuple(mask.shape)}", input="mask")
    if tuple(mask.shape[1:]) != (h, w):
        raise ContinuityError(f"the mask is {mask.shape[2]}x{mask.shape[1]} but the image is {w}x{h}", input="mask")
    if mask.shape[0] == 1 and b > 1:
        mask = mask.expand(b, h, w)
    elif mask.shape[0] != b:
        raise ContinuityError(f"{mask.shape[0]} masks for {b} images", input="mask")
    return image.float(), mask.float().clamp(0, 1)


def two_pass_inpaint(model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name, scheduler,
                     denoise_1=0.75, denoise_2=0.40, model_2=None, before_pass_2=None):
    """Pass 1: masked inpaint (noise mask; inpaint conditioning for inpaint models). Pass 2: the
    whole crop re-sampled without the mask at ``denoise_2``. Decode and composite into ``image``
    with ``mask``. ``before_pass_2(latent) -> latent``, when given, may change pass 2's input
    (the video fix blends it toward the previous frame's result). Returns (IMAGE (B, H, W, 3), LATENT dict)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (KSampler's own sampling code)

    image, mask = _check_sizes(image, mask)
    b, h, w = image.shape[:3]
    if denoise_1 > 0:
        if _is_inpaint_model(model):
            pos1, neg1, latent = comfy_nodes.InpaintModelConditioning().encode(
                positive, negative, image, vae, mask, noise_mask=True)
        else:
            pos1, neg1 = positive, negative
            latent = {"samples": vae.encode(image), "noise_mask": mask.reshape(-1, 1, h, w)}
        latent = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, pos1, neg1,
                                             latent, denoise=denoise_1)[0]
    else:
        latent = {"samples": vae.encode(image)}
    comfy.model_management.throw_exception_if_processing_interrupted()
    latent = {k: v for k, v in latent.items() if k != "noise_mask"}
    if before_pass_2 is not None:
        latent = before_pass_2(latent)
    if denoise_2 > 0:
        latent = comfy_nodes.common_ksampler(model_2 if model_2 is not None else model, seed, steps, cfg,
                                             sampler_name, scheduler, positive, negative, latent,
                                             denoise=denoise_2)[0]
    comfy.model_management.throw_exception_if_processing_interrupted()
    if denoise_1 <= 0 and denoise_2 <= 0:
        return image.clone(), latent
    decoded = vae.decode(latent["samples"])
    if decoded.ndim == 5:
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    decoded = decoded[..., :3].float().cpu()
    if tuple(decoded.shape[1:3]) != (h, w):  # VAEs with other strides: fit back (rare)
        decoded = torch.nn.functional.interpolate(decoded.movedim(-1, 1), size=(h, w), mode="bicubic",
                                                  align_corners=False).movedim(1, -1)
    out = geometry.composite(image.cpu(), decoded.clamp(0, 1), mask.cpu())
    return torch.from_numpy(out), latent


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
        out, latent = two_pass_inpaint(model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name,
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


def face_fix(face_model, images, model, positive, negative, vae, *, which="all", index=0,
             regions="face, ears, hair, beard", grow=5.0, min_face=24, context=1.5, min_size=128, target_size=1024,
             padding="edge", seed=0, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal", denoise_1=0.75,
             denoise_2=0.40, feather=4.5, colour_match=False, model_2=None, choose=None):
    """Every chosen face of every image: region mask, crop, two passes, paste back (face k of the
    whole batch uses seed + k). Faces are found once, on the input image; each fixed face is
    pasted into the running result before the next one is cropped. ``choose(rgb, faces, i)``, when
    given, picks the faces instead of ``which`` / ``index``. Returns (images, masks, count)."""
    from ..continuity import faces as cf
    from ..continuity.faces import masks as cmasks

    region_tuple = cmasks.normalise_regions(regions)
    if not region_tuple:
        raise ContinuityError("no region given; e.g. 'face, hair'", input="regions")
    frames = _common.split_images(images)
    results, used_masks = [], []
    k = 0
    for i, frame in enumerate(frames):
        comfy.model_management.throw_exception_if_processing_interrupted()
        current = frame.detach().cpu().float()[None]            # (1, H, W, C)
        rgb = cf.as_uint8_rgb(current[0].numpy())
        found = [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]
        if choose is not None:
            chosen = choose(rgb, found, i)
        else:
            chosen = cmasks.select_faces(found, which, index) if found else []
        ordered = sorted(found, key=lambda f: f.area, reverse=True)
        union = np.zeros(rgb.shape[:2], np.float32)
        for face in chosen:
            res = cmasks.region_masks(rgb, found, regions=region_tuple, which="index", index=ordered.index(face),
                                      grow=grow, grow_unit="percent", parser=face_model.parser, image_index=i)
            mask = np.clip(res.mask.astype(np.float32), 0.0, 1.0)
            if not mask.any():
                continue
            crops, cmask, record = geometry.crop_for_inpaint(current, mask[None], context=context, min_size=min_size,
                                                             target=target_size, pad_mode=padding)
            fixed, _ = two_pass_inpaint(model, positive, negative, vae, torch.from_numpy(crops[..., :3]),
                                        torch.from_numpy(cmask), seed + k, steps, cfg, sampler_name, scheduler,
                                        denoise_1, denoise_2, model_2)
            if crops.shape[-1] > 3:  # keep extra channels (alpha) of the input as they were
                fixed = torch.cat([fixed, torch.from_numpy(crops[..., 3:])], dim=-1)
            current = torch.from_numpy(geometry.paste_back(record, fixed, feather_percent=feather,
                                                           colour_match=colour_match))
            union = np.maximum(union, mask)
            k += 1
        results.append(current)
        used_masks.append(torch.from_numpy(union)[None])
    return results, used_masks, k


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
                io.Combo.Input("which", options=["all", "largest", "most_confident", "index", CHARACTER_CHOICE],
                               default="all",
                               tooltip="Which faces of each image: all of them, the largest, the most confident, "
                                       "the one at 'index' (0 = largest), or " + WHICH_TIP + " Images without it "
                                       "pass through unchanged."),
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
                clip=None, prompt="", keep_only_if_better=True) -> io.NodeOutput:
        from ..continuity.faces import masks as cmasks
        if not hasattr(face_model, "detect") or not hasattr(face_model, "parser"):
            raise ContinuityError("expects a face model from Load Face Model (Continuity)", input="face_model")
        chooser = CharacterChooser(face_model, character, which)
        char = chooser.char
        lines = []
        model, model_2, positive = _character_conditioning(char, model, model_2, positive, clip, prompt or "",
                                                           float(lora_strength), lines)
        lines += [n for n in (chooser.note(), chooser.identity_line()) if n]
        per_image: list[str] = []

        def choose(rgb, found, i):
            if not chooser.active:
                chosen = cmasks.select_faces(found, which, index) if found else []
                per_image.append(f"image {i}: {len(found)} face(s), {len(chosen)} chosen ({which})")
                return chosen
            match = chooser.match(rgb, found, i)
            per_image.append(match.describe(i) + ("" if match.chosen is not None else "; passed through unchanged"))
            if match.chosen is not None:
                before[i] = (match.chosen.box, match.best_similarity)
            return [match.chosen] if match.chosen is not None else []

        before: dict[int, tuple] = {}
        results, masks, count = face_fix(
            face_model, image, model, positive, negative, vae, which=which, index=index, regions=regions, grow=grow,
            min_face=min_face, context=context, min_size=min_size, target_size=target_size, padding=padding,
            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise_1=denoise_1,
            denoise_2=denoise_2, feather=feather, colour_match=colour_match, model_2=model_2, choose=choose)
        if before:
            count -= _check_identity_after_fix(chooser, face_model, image, results, masks, before, min_face,
                                               bool(keep_only_if_better), per_image)
        report = "\n".join(lines + per_image + [f"faces fixed: {count}"])
        sizes = {tuple(r.shape[1:]) for r in results}
        if len(sizes) == 1:
            return io.NodeOutput(torch.cat(results), torch.cat(masks), count, report,
                                 ui={"continuity_text": [report]})
        # images of different sizes cannot share a batch: give the first (ComfyUI runs lists per item)
        raise ContinuityError("the images have different sizes; send them as a list (one per run)", input="image")


def _check_identity_after_fix(chooser, face_model, images, results, masks, before, min_face: int,
                              keep_only_if_better: bool, lines: list[str]) -> int:
    """Scores each fixed face against the character again (the face found at the same place in the
    fixed image). Where the fix lowered the similarity or lost the face and ``keep_only_if_better``
    is set, the original image (and an empty mask) replaces the result. Returns how many fixes were
    undone; adds a line per image to ``lines``."""
    from ..continuity import faces as cf
    from ..continuity.faces.boxes import iou
    frames = _common.split_images(images)
    undone = 0
    for i, (box, s0) in sorted(before.items()):
        if not bool(masks[i].any()):        # the chosen face's region mask was empty: nothing was changed
            lines.append(f"image {i}: similarity {s0:.3f}; not fixed (the face's region mask was empty)")
            continue
        rgb = cf.as_uint8_rgb(results[i][0].numpy())
        found = [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]
        s1 = None
        if found:
            match = chooser.match(rgb, found, i)
            overlaps = [iou(box, f.box) for f in match.faces]
            j = int(np.argmax(overlaps)) if overlaps else None
            if j is not None and overlaps[j] > 0.3:
                s1 = match.similarities[j]
        after = "face not found again" if s1 is None else f"{s1:.3f}"
        worse = s1 is None or s1 < s0
        if worse and keep_only_if_better:
            results[i] = frames[i].detach().cpu().float()[None].clone()
            masks[i] = torch.zeros_like(masks[i])
            undone += 1
            lines.append(f"image {i}: similarity {s0:.3f} before the fix, {after} after: original kept "
                         "(keep_only_if_better)")
        else:
            lines.append(f"image {i}: similarity {s0:.3f} before the fix, {after} after"
                         + (" (lower, kept: keep_only_if_better is off)" if worse else ""))
    return undone


def _character_conditioning(char, model, model_2, positive, clip, prompt: str, strength: float, lines: list[str]):
    """The models with the character's LoRA and the positive conditioning (encoded here from ``prompt``
    when ``clip`` is connected, the character's words first). Notes what was done in ``lines``."""
    if clip is not None and positive is not None:
        raise ContinuityError("connect either positive (conditioning made elsewhere) or clip (the prompt text is "
                              "then encoded here), not both", input="positive")
    if clip is None and positive is None:
        raise ContinuityError("connect positive conditioning, or clip to have the node encode 'prompt'",
                              input="positive")
    if clip is None and prompt.strip():
        raise ContinuityError("the prompt text needs clip to be encoded: connect clip and leave positive "
                              "unconnected (or empty the prompt)", input="clip")
    if char is not None:
        from .character import _apply_character_lora
        with_lora, clip, note = _apply_character_lora(char, model, clip, strength)
        if model_2 is not None and with_lora is not model:      # the LoRA was applied: pass 2 gets it too
            model_2, _, _ = _apply_character_lora(char, model_2, None, strength)
            note += " (on model_2 too)"
        model = with_lora
        lines.append(f"character '{char.name}' (revision {char.revision}): {note}")
    if clip is not None:
        text, added = (with_character(char, prompt) if char is not None else (prompt.strip(), False))
        import nodes as comfy_nodes  # ComfyUI's CLIPTextEncode
        positive = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        how = ("the character's trigger word and class phrase put first" if added else
               "as written" if char is None else "as written: it names the character already")
        lines.append(f"prompt: \"{text}\" ({how})")
    elif char is not None:
        lines.append("positive: the connected conditioning, as given (connect clip and write the prompt here to "
                     "have the character's trigger word added)")
    return model, model_2, positive


NODES = [CropForInpaint, TwoPassInpaint, PasteBack, FaceFix]
