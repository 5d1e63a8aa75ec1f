"""Grow Character Layer: the next framing of a synthetic character dataset (V3 adapter; the face fix,
the scores and the filter are the core's, ``continuity.fix`` and ``continuity.character``)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from comfy_api.latest import io

from ..continuity import character as charlib
from ..continuity.character import growth
from ..continuity.character.refine import fix_largest_faces, score_images
from ..continuity.errors import ContinuityError
from ..continuity.fix import FixSettings
from . import _common, _glue
from ._types import CATEGORY, Character, FaceModel


def clip_style_embeddings(clip_vision, references: list[np.ndarray], candidates: list[np.ndarray]):
    """CLIP image embeddings (``clip_vision.encode_image(...).image_embeds``, L2-normalised) of the
    style references (each once) and of the candidates, as numpy arrays (m, d), (n, d)."""
    from .scoring import clip_image_embeds
    with torch.inference_mode():
        ref_e = clip_image_embeds(clip_vision, [torch.from_numpy(np.ascontiguousarray(r)) for r in references])
        cand_e = clip_image_embeds(clip_vision, [torch.from_numpy(np.ascontiguousarray(c)) for c in candidates])
    return ref_e.float().cpu().numpy(), cand_e.float().cpu().numpy()


class GrowCharacterLayer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers
        return io.Schema(
            node_id="ContinuityGrowCharacterLayer",
            display_name="Grow Character Layer (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Makes the next framing of a synthetic character dataset (close-up -> close-up portrait -> "
                "portrait -> 3/4 -> full body): each image of the current layer is placed on a larger canvas "
                "(ImagePadForOutpaint) and outpainted with inpaint conditioning and the character's latest LoRA; "
                "the face is fixed by the face fix (the face-region mask, crop, two-pass inpaint, paste back; "
                "the fix is kept only if it does not lower the identity score); every candidate is scored against "
                "the references (and, for animated characters, on style: CLIP-I with a CLIP vision model "
                "connected, else colour statistics); those above the profile's thresholds go into the next "
                "version of the character's dataset (output/continuity/datasets/<character>/vN, the provenance in "
                "its manifest), which is recorded in a new profile revision."
            ),
            is_input_list=True,
            is_output_node=True,
            inputs=[
                Character.Input("character", tooltip="The profile (references, thresholds, LoRA, previous dataset)."),
                io.Image.Input("images", tooltip="The current layer's images (a list or a batch)."),
                io.Model.Input("model", tooltip="The checkpoint to outpaint with (an inpaint model gets inpaint conditioning)."),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                io.Combo.Input("from_layer", options=list(growth.LAYERS[:-1]), default="closeup",
                               tooltip="The framing of the given images; the candidates have the next framing."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=8,
                             tooltip="Long side of the outpainted canvas (multiple of 8)."),
                io.Int.Input("candidates", default=2, min=1, max=64, tooltip="Candidates per image (seeds seed, seed+1, ...)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="First seed."),
                io.Int.Input("steps", default=25, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, tooltip="Guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal", tooltip="Scheduler."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="Extra prompt text; the character's trigger word, class phrase and the layer's framing words come first."),
                io.String.Input("negative", default="blurry, deformed, extra limbs, cropped", multiline=True, tooltip="Negative prompt."),
                io.Int.Input("feather_px", default=24, min=0, max=512,
                             tooltip="Soft edge of the outpaint seam, in pixels (ImagePadForOutpaint's feathering)."),
                io.Float.Input("lora_strength", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="Strength of the character's latest LoRA (when it is in the loras folder); 0: none."),
                io.Boolean.Input("fix_faces", default=True,
                                 tooltip="Fix each candidate's largest face with the face fix (as Face Fix: region mask, "
                                         "crop, two passes, paste back), kept only if its identity does not drop."),
                io.Float.Input("fix_denoise", default=0.45, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoise of the face fix's first pass (masked; Face Fix's denoise_1). 0: no fix."),
                io.Int.Input("fix_size", default=512, min=64, max=2048, step=64,
                             tooltip="Side of the face crop for the fix (Face Fix's target_size)."),
                io.Float.Input("threshold", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Identity threshold; 0 uses the profile's (else the face model's own)."),
                FaceModel.Input("face_model", optional=True, tooltip="Face model for detection and identity (default: dlib)."),
                io.String.Input("filenames", optional=True, tooltip="Names of the images, for the provenance (from Load Image Folder)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="A CLIP vision model (Load CLIP Vision): each candidate also gets a CLIP-I style "
                                            "score, the mean cosine of its image embedding to the style references' "
                                            "(each embedded once per run); animated characters are then filtered on CLIP-I "
                                            "instead of the colour statistics. Both scores are reported."),
                io.Float.Input("clip_style_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CLIP-I threshold for animated characters (with clip_vision); 0: the profile's "
                                       "clip_style_threshold, else the style references' own (the lowest mean CLIP-I of a "
                                       "style reference to the others; needs two or more), else the colour statistics decide."),
                io.Float.Input("fix_denoise_2", default=0.40, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Denoise of the face fix's second pass (the whole crop, no mask; Face Fix's "
                                       "denoise_2). 0 skips it."),
                io.String.Input("fix_regions", default="face, ears, hair, beard", optional=True,
                                tooltip="Regions the face fix repaints (as Face Fix's regions): face (= skin, brows, "
                                        "eyes, nose, mouth), skin, brows, eyes, nose, mouth, ears, hair, beard, neck, "
                                        "glasses, hat."),
            ],
            outputs=[
                Character.Output("character_out", display_name="character", tooltip="The profile with the new dataset version recorded."),
                io.Image.Output("kept", display_name="kept", is_output_list=True, tooltip="The candidates that passed the filter."),
                io.Image.Output("candidates_out", display_name="candidates", is_output_list=True, tooltip="Every candidate, for review."),
                io.String.Output("report", display_name="report", tooltip="Per candidate: canvas, faces, identity and style scores, kept or why not (JSON)."),
                io.String.Output("dataset_path", display_name="dataset_path", tooltip="Folder of the new dataset version."),
            ],
        )

    @classmethod
    def validate_inputs(cls, from_layer, sampler_name, scheduler):
        return _common.validation_error(cls, {"from_layer": from_layer, "sampler_name": sampler_name,
                                              "scheduler": scheduler})

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, character, images, model, clip, vae, from_layer, resolution, candidates, seed, steps, cfg,
                sampler_name, scheduler, prompt, negative, feather_px, lora_strength, fix_faces, fix_denoise,
                fix_size, threshold, face_model=None, filenames=None, clip_vision=None,
                clip_style_threshold=None, fix_denoise_2=None, fix_regions=None) -> io.NodeOutput:
        g = {k: _glue.first(v) for k, v in dict(
            model=model, clip=clip, vae=vae, from_layer=from_layer, resolution=resolution,
            candidates=candidates, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
            prompt=prompt, negative=negative, feather_px=feather_px, lora_strength=lora_strength,
            fix_faces=fix_faces, fix_denoise=fix_denoise, fix_size=fix_size, threshold=threshold,
            face_model=face_model, clip_vision=clip_vision, clip_style_threshold=clip_style_threshold).items()}
        g["fix_denoise_2"] = float(_glue.first(fix_denoise_2, 0.40))
        g["fix_regions"] = str(_glue.first(fix_regions, "face, ears, hair, beard"))
        char = charlib.as_character(_glue.first(character))
        srcs = _common.split_images(images)
        if not srcs:
            raise ContinuityError("no images given", input="images")
        names = [str(n) for n in (filenames or [])]
        names += [f"image_{i}" for i in range(len(names), len(srcs))]
        run = _Growth(char, g)
        timings: dict = {}
        t0 = time.perf_counter()
        cands, outs = run.outpaint(srcs, names)
        timings["outpaint_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run.score(cands, outs)
        timings["score_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if g["fix_faces"] and g["fix_denoise"] > 0:
            run.fix(cands, outs)
        timings["fix_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        style_info = run.filter(cands, outs)
        timings["style_filter_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        new, result = run.write(cands, outs, style_info)
        timings["write_s"] = time.perf_counter() - t0
        report = json.dumps({"layer": run.layer, "dataset_version": result.version, "dataset_path": result.folder,
                             "kept": result.kept, "lora": run.lora_note, "style": style_info,
                             "timings": {k: round(v, 3) for k, v in timings.items()},
                             "candidates": [c.to_dict() for c in cands]},
                            indent=1, default=str)
        kept = [_common.np_to_image(o) for c, o in zip(cands, outs) if c.kept]
        every = [_common.np_to_image(o) for o in outs]
        text = (f"{run.layer}: kept {result.kept} of {len(cands)} -> {result.folder}" if result.version else
                f"{run.layer}: kept 0 of {len(cands)}; no dataset version written (see the report)")
        if style_info["filtered"]:
            text += f" (style filter: {style_info['metric']})"
        return io.NodeOutput(new, kept, every, report, result.folder, ui={"text": [text]})


class _Growth:
    """One run of Grow Character Layer: the ComfyUI side (outpainting, the inpaint callable) around the
    core's scoring, face fix, filter and dataset writing."""

    def __init__(self, char, g: dict):
        self.char, self.g = char, g
        self.layer = growth.next_layer(g["from_layer"])
        self.scale = growth.LAYER_SCALE[self.layer]
        self.det, self.emb = _glue.identity_backend(g["face_model"])
        default = float(getattr(self.emb, "threshold", 0.0))
        self.threshold = g["threshold"] if g["threshold"] != 0 else char.threshold(getattr(self.emb, "name", None),
                                                                                    default)
        self.model, clip, self.lora_note = _glue.apply_character_lora(char, g["model"], g["clip"], g["lora_strength"])
        self.text = char.prompt(", ".join(t for t in (growth.LAYER_PROMPT[self.layer], g["prompt"].strip()) if t))
        self.pos = _glue.encode_text(clip, self.text)
        self.neg = _glue.encode_text(clip, g["negative"])

    def outpaint(self, srcs, names) -> tuple[list, list[np.ndarray]]:
        """Each source on its larger canvas, outpainted once per candidate (encoded once per source)."""
        import comfy.utils
        import nodes as comfy_nodes
        g = self.g
        pbar = comfy.utils.ProgressBar(len(srcs) * g["candidates"])
        cands: list = []
        outs: list[np.ndarray] = []
        for i, src in enumerate(srcs):
            src = src[..., :3].float()
            h, w = src.shape[:2]
            canvas = growth.plan_canvas(w, h, self.scale, g["resolution"])
            inner = comfy.utils.common_upscale(src[None].movedim(-1, 1), canvas.inner_w, canvas.inner_h,
                                               "lanczos", "disabled").movedim(1, -1).clamp(0, 1)
            padded, mask = comfy_nodes.ImagePadForOutpaint().expand_image(
                inner, canvas.left, canvas.top, canvas.right, canvas.bottom, g["feather_px"])
            p1, n1, latent0 = _glue.inpaint_latent(self.model, self.pos, self.neg, g["vae"], padded, mask)
            m = mask.reshape(1, *mask.shape[-2:], 1).float()
            for k in range(g["candidates"]):
                _glue.throw_if_interrupted()
                sd = g["seed"] + k
                latent = comfy_nodes.common_ksampler(self.model, sd, g["steps"], g["cfg"], g["sampler_name"],
                                                     g["scheduler"], p1, n1, dict(latent0), denoise=1.0)[0]
                dec = _glue.decode(g["vae"], latent["samples"])
                outs.append((padded * (1 - m) + dec[:1] * m)[0].numpy())
                cands.append(growth.Candidate(source=names[i], index=len(cands), seed=sd,
                                              canvas=(canvas.width, canvas.height)))
                pbar.update(1)
        return cands, outs

    def score(self, cands, outs) -> None:
        for c, (s, n) in zip(cands, score_images(self.char, outs, detector=self.det, embedder=self.emb)):
            c.identity, c.faces, c.face_found, c.model = s, n, n > 0, getattr(self.emb, "name", "")

    def fix(self, cands, outs) -> None:
        """The face fix on each candidate's largest face; kept where its identity does not drop."""
        g = self.g
        idx = [j for j, c in enumerate(cands) if c.face_found]
        settings = FixSettings(regions=g["fix_regions"], target_size=g["fix_size"])
        inpaint = _glue.two_pass_inpainter(
            self.model, self.pos, self.neg, g["vae"], seed=g["seed"], steps=g["steps"], cfg=g["cfg"],
            sampler_name=g["sampler_name"], scheduler=g["scheduler"], denoise_1=g["fix_denoise"],
            denoise_2=g["fix_denoise_2"], seeds=[cands[j].seed for j in idx])
        fixed, reports = fix_largest_faces(
            self.char, [outs[j] for j in idx], [cands[j].identity for j in idx], detector=self.det,
            embedder=self.emb, parser=_glue.face_parser(g["face_model"]), inpaint=inpaint, settings=settings,
            interrupted=_glue.throw_if_interrupted)
        for j, img, rep in zip(idx, fixed, reports):
            if rep is None:
                continue
            c = cands[j]
            c.fixed, c.reason = rep.fixed, ""
            if c.fixed:
                outs[j], c.identity = img, rep.after
            c.fix_note = rep.outcome() + ("; kept" if rep.fixed else "")

    def filter(self, cands, outs) -> dict:
        """Style scores (colour statistics; CLIP-I with a CLIP vision model) and the keep filter."""
        char, cv = self.char, self.g["clip_vision"]
        need_style = char.style == "animated"
        clip_thr, clip_thr_source = None, ""
        if need_style or cv is not None:   # both scores are reported; animated characters are filtered on style
            from PIL import Image
            style_refs = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0
                          for p in char.style_reference_images()]
            cache: dict = {}
            for c, img in zip(cands, outs):
                c.style = growth.style_similarity(img, style_refs, cache=cache)
            if cv is not None:
                ref_e, cand_e = clip_style_embeddings(cv, style_refs, outs)
                for c, v in zip(cands, growth.clip_style_scores(cand_e, ref_e)):
                    c.clip_style = float(v)
                clip_thr, clip_thr_source = growth.clip_style_threshold(
                    self.g["clip_style_threshold"], getattr(char, "clip_style_threshold", None), ref_e)
        growth.apply_filter(cands, threshold=self.threshold, style_threshold=char.style_threshold,
                            need_style=need_style, clip_style_threshold=clip_thr)
        return {"filtered": need_style, "metric": (cands[0].style_metric if cands else "") if need_style else "",
                "colour_threshold": char.style_threshold if need_style else None,
                "clip_i": cv is not None, "clip_threshold": clip_thr, "clip_threshold_source": clip_thr_source}

    def write(self, cands, outs, style_info: dict):
        """The kept candidates as a new dataset version of the profile, recorded in a new revision."""
        char, g = self.char, self.g
        prev = char.latest_dataset()
        prev_dir = None
        if prev and prev.get("path"):
            try:
                prev_dir = _common.confine_dataset(str(prev["path"]))
            except ContinuityError:
                prev_dir = None
        provenance = {"character": char.name, "revision": char.revision, "from_layer": g["from_layer"],
                      "prompt": self.text, "negative": g["negative"], "lora": self.lora_note, "steps": g["steps"],
                      "cfg": g["cfg"], "sampler": g["sampler_name"], "scheduler": g["scheduler"],
                      "resolution": g["resolution"], "scale": self.scale, "face_model": getattr(self.emb, "name", ""),
                      "threshold": self.threshold,
                      "style_threshold": char.style_threshold if style_info["filtered"] else None,
                      "style": style_info,
                      "fix": {"regions": g["fix_regions"], "denoise_1": g["fix_denoise"],
                              "denoise_2": g["fix_denoise_2"], "size": g["fix_size"],
                              "kept_if": "the face's identity does not drop"}}
        result = growth.write_layer(_common.datasets_root(), char.name, self.layer, cands, outs, previous=prev_dir,
                                    caption=growth.LAYER_PROMPT[self.layer], provenance=provenance)
        if not result.version:      # nothing kept, no previous version: nothing written, nothing recorded
            return char, result
        new = charlib.record_dataset(os.path.dirname(char.folder), char.name, version=result.version,
                                     path=result.folder, note=f"layer {self.layer}: {result.kept}/{len(cands)} kept",
                                     extra={"layer": self.layer, "kept": result.kept, "candidates": len(cands),
                                            "dataset": char.name})
        return new, result


NODES = [GrowCharacterLayer]
