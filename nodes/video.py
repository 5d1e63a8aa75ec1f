"""Video metric nodes (V3 adapters over ``continuity.video``): identity over frames, motion intensity."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..continuity import video
from ..continuity.errors import ContinuityError
from ..continuity.faces import embedders
from ..continuity.scoring import plots
from ..continuity.scoring.similarity import POLICIES, get_face_detector
from . import _common
from ._types import CATEGORY, Character, FaceModel, Scores
from .scoring import POLICY_TOOLTIP, _device, _interrupt, apply_character_thresholds, character_of, references_for, to_uint8_list


class IdentityOverFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityIdentityOverFrames",
            display_name="Identity Over Frames (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "Per-frame cosine similarity of the face to the reference portraits and the MotionCharacter "
                "ID-consistency loss (1 - mean cosine over the frames with a face), with a plot over time. "
                "Frames without a face are flagged and left out of the mean, never given a number."),
            inputs=[
                io.Image.Input("frames", tooltip="The video frames as an IMAGE batch (e.g. from Load Video / VAE Decode)."),
                io.Image.Input("references", optional=True,
                               tooltip="Reference portraits (a batch). Optional when a character is connected."),
                io.Combo.Input("model", options=list(embedders.NAMES), default="dlib",
                               tooltip="Identity model (see Identity Models for what is installed)."),
                io.Combo.Input("face_policy", options=list(POLICIES), default="largest", tooltip=POLICY_TOOLTIP),
                FaceModel.Input("face_model", optional=True, tooltip="Optional face-analysis backend (default: dlib)."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, its reference portraits "
                                        "replace references and its threshold for the model (else its default) "
                                        "replaces the model's own in the plot and the scores."),
            ],
            outputs=[
                io.Float.Output("id_consistency_loss", display_name="id_consistency_loss", tooltip="1 - mean cosine similarity over the frames with a face."),
                io.Float.Output("mean_similarity", display_name="mean_similarity", tooltip="Mean cosine similarity over the frames with a face."),
                io.Int.Output("frames_without_face", display_name="frames_without_face", tooltip="Frames in which no face was used."),
                io.Image.Output("plot", display_name="plot", tooltip="Similarity over time with the model's threshold."),
                Scores.Output("scores", display_name="scores", tooltip="Per-frame scores (for Select By Similarity or Consistency Report)."),
                io.String.Output("summary", display_name="summary", tooltip="The figures as text."),
            ],
        )

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, frames, model, face_policy, references=None, face_model=None, character=None) -> io.NodeOutput:
        char = character_of(character)
        refs, ref_names = references_for(char, references, node="Identity Over Frames")
        fr = to_uint8_list(frames)
        emb = embedders.get_embedder(model, models_dir=_common.models_dir(), device=_device())
        detector = face_model.detector if face_model is not None and hasattr(face_model, "detector") else get_face_detector("dlib")
        import comfy.utils
        pbar = comfy.utils.ProgressBar(len(fr))

        def progress(i, n):
            _interrupt()
            pbar.update_absolute(i)

        res = video.identity_over_frames(fr, refs, emb, policy=face_policy, detector=detector, progress=progress,
                                         reference_names=ref_names)
        if char is not None:
            apply_character_thresholds(res.scores, char)
            res.threshold = res.scores.models[res.model].threshold
        if res.n_scored == 0:
            raise ContinuityError(f"no face was found in any of the {len(fr)} frames", input="frames")
        plot = plots.time_plot({f"{model} similarity": res.per_frame}, threshold=res.threshold,
                               title=f"Identity over frames: ID-consistency loss {res.id_consistency_loss:.4f}")
        s = res.scores
        missing = len(fr) - res.n_scored
        text = (f"{model}: {res.n_scored}/{len(fr)} frames with a face, mean cosine {res.mean:.4f}, "
                f"ID-consistency loss {res.id_consistency_loss:.4f} (threshold {res.threshold})"
                + (f"; no face in frames {[i for i, f in enumerate(res.face_found) if not f]}" if missing else ""))
        img = _common.np_to_image(plot)
        return io.NodeOutput(float(res.id_consistency_loss), float(res.mean), missing, img, s, text,
                             ui=ui.PreviewImage(img, cls=cls))


class MotionIntensity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityMotionIntensity",
            display_name="Motion Intensity (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "MotionCharacter's motion intensity: optical flow between consecutive frames; per frame pair the "
                "mean flow magnitude is the threshold and the intensity is the mean magnitude of the pixels above "
                "it, averaged over the clip and optionally capped. Also their region weight map "
                "clip(f/255 + 0.5, 1, 1.5) per frame as a MASK."),
            inputs=[
                io.Image.Input("frames", tooltip="The video frames as an IMAGE batch (at least 2, one size)."),
                io.Combo.Input("method", options=list(video.FLOW_METHODS), default="farneback",
                               tooltip="farneback / dis: OpenCV, nothing to download. raft_small / raft_large: "
                                       "torchvision RAFT, weights in models/optical_flow."),
                io.Float.Input("cap", default=20.0, min=0.0, max=1000.0, step=0.5,
                               tooltip="Cap the clip's intensity at this value (the paper uses 20); 0: no cap."),
                io.Int.Input("max_side", default=512, min=0, max=4096, step=8,
                             tooltip="Compute the flow on copies at most this many pixels on the longest side "
                                     "(faster); magnitudes are given in pixels of the original frames. 0: full size."),
                io.Combo.Input("weight_scale", options=["1 to 1.5", "0 to 1"], default="1 to 1.5",
                               tooltip="The weight map as the paper's weights (1 to 1.5), or rescaled to 0-1 for use "
                                       "as an ordinary mask."),
            ],
            outputs=[
                io.Float.Output("intensity", display_name="intensity", tooltip="Motion intensity of the clip (capped)."),
                io.Float.Output("raw_intensity", display_name="raw_intensity", tooltip="Before the cap."),
                io.Mask.Output("weight_map", display_name="weight_map", tooltip="Region weights per frame (N, H, W)."),
                io.Image.Output("magnitude", display_name="magnitude", tooltip="Flow magnitude per frame pair as a picture (brighter: more motion)."),
                io.String.Output("summary", display_name="summary", tooltip="Per-pair intensities as text."),
            ],
        )

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, frames, method, cap, max_side, weight_scale) -> io.NodeOutput:
        fr = to_uint8_list(frames)
        res = video.motion_intensity(fr, method, cap=cap if cap > 0 else None, max_side=max_side,
                                     models_dir=_common.models_dir(), device=_device(), check_interrupt=_interrupt)
        h, w = fr[0].shape[:2]
        weights = video.region_weights(res.magnitudes, len(fr), (h, w))
        if weight_scale == "0 to 1":
            weights = (weights - 1.0) / 0.5
        import cv2
        top = max(1e-6, max(float(m.max()) for m in res.magnitudes))
        mag_imgs = []
        for m in res.magnitudes:
            v = cv2.resize(np.clip(m / top, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            mag_imgs.append(np.repeat(v[..., None], 3, axis=2))
        text = (f"{method}: intensity {res.intensity:.3f}"
                + (f" (capped at {res.cap:g}; raw {res.raw_intensity:.3f})" if res.cap else "")
                + f" over {len(res.per_pair)} frame pairs; per pair: " + ", ".join(f"{v:.2f}" for v in res.per_pair))
        return io.NodeOutput(float(res.intensity), float(res.raw_intensity), torch.from_numpy(weights.astype(np.float32)),
                             torch.from_numpy(np.stack(mag_imgs)), text, ui=ui.PreviewText(text))


NODES = [IdentityOverFrames, MotionIntensity]
