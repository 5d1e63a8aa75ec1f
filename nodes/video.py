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
from . import _common, _glue
from ._types import CATEGORY, Character, FaceModel, Scores, Tracks, TrackStitch
from ._types import Cast as CastType
from .cast import as_cast
from .scoring import POLICY_TOOLTIP, apply_character_thresholds, character_of, references_for, to_uint8_list


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
                io.String.Output("report", display_name="report", tooltip="The figures as text."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model, face_policy):
        return _common.validation_error(cls, {"model": model, "face_policy": face_policy})

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, frames, model, face_policy, references=None, face_model=None, character=None) -> io.NodeOutput:
        char = character_of(character)
        refs, ref_names = references_for(char, references, node="Identity Over Frames")
        fr = to_uint8_list(frames)
        emb = embedders.get_embedder(model, models_dir=_common.models_dir(), device=_glue.torch_device())
        detector = face_model.detector if face_model is not None and hasattr(face_model, "detector") else get_face_detector("dlib")
        import comfy.utils
        pbar = comfy.utils.ProgressBar(len(fr))

        def progress(i, n):
            _glue.throw_if_interrupted()
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
                io.String.Output("report", display_name="report", tooltip="Per-pair intensities as text."),
            ],
        )

    @classmethod
    def validate_inputs(cls, method, weight_scale):
        return _common.validation_error(cls, {"method": method, "weight_scale": weight_scale})

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, frames, method, cap, max_side, weight_scale) -> io.NodeOutput:
        fr = to_uint8_list(frames)
        res = video.motion_intensity(fr, method, cap=cap if cap > 0 else None, max_side=max_side,
                                     models_dir=_common.models_dir(), device=_glue.torch_device(), check_interrupt=_glue.throw_if_interrupted)
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



# ============================================================================ shots: tracks, crops, fix, flicker

class _LazyFrames:
    """An IMAGE batch seen as uint8 RGB frames, converted one at a time when asked (a long 1080p shot as
    uint8 all at once would double its memory)."""

    def __init__(self, frames: torch.Tensor):
        self.t = frames

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        from ..continuity.faces.base import as_uint8_rgb
        return as_uint8_rgb(self.t[i].detach().cpu().numpy())


def _check_frames(frames, name: str = "frames") -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] < 1:
        raise ContinuityError("expects an IMAGE batch of frames (N, H, W, C)", input=name)
    if frames.shape[-1] not in (1, 3, 4):
        raise ContinuityError(f"frames with {frames.shape[-1]} channels; expected 1, 3 or 4", input=name)
    if frames.shape[0] > MAX_FRAMES:
        raise ContinuityError(f"{frames.shape[0]} frames; at most {MAX_FRAMES} per run (split the shot)", input=name)
    return frames


MAX_FRAMES = 4096


def _cast_scoring(cast, face_model):
    """(score(embeddings) -> (n, members), thresholds, names, embed(rgb, faces)) for the cast."""
    from ..continuity.cast import similarity_matrix
    from ..continuity.scoring.similarity import embed_faces
    det, emb, _ = _glue.face_backend(face_model)

    def embed(rgb, faces):
        return embed_faces(rgb, faces, emb)
    if cast is None:
        return None, [], [], embed
    ids = cast.identities(emb, detector=det)
    return (lambda e: similarity_matrix(e, ids)), [i.threshold for i in ids], cast.names, embed


def run_tracking(frames: torch.Tensor, face_model, cast, *, min_face: int = 24, max_gap: int = 5,
                 samples: int = 8, cut_threshold: float = 0.35, progress=None):
    from ..continuity.tracks import track_faces
    if not hasattr(face_model, "detect"):
        raise ContinuityError("expects a face model from Load Face Model (Continuity)", input="face_model")
    score, thresholds, names, embed = _cast_scoring(cast, face_model)

    def detect(rgb, i):
        return [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]
    return track_faces(_LazyFrames(frames), detect, embed=embed, score=score, thresholds=thresholds, members=names,
                       max_gap=max_gap, samples=samples, cut_threshold=cut_threshold, progress=progress)


def _track_masker(frames: torch.Tensor, ts, face_model, regions, grow: float):
    """mask_of(track, frame): the region mask of the track's face at that frame (other faces of the frame
    known, so hair stays on its person); one frame converted once for all its tracks."""
    from ..continuity.faces import masks as cmasks
    region_tuple = cmasks.normalise_regions(regions)
    if not region_tuple:
        raise ContinuityError("no region given; e.g. 'face, hair'", input="regions")
    lazy = _LazyFrames(frames)
    cache: dict[int, tuple] = {}
    needs_person = getattr(face_model.parser, "use_mediapipe", False) and \
        bool(set(region_tuple) & {"hair", "ears", "beard", "neck"})

    def mask_of(track, f):
        if f not in cache:          # one frame at a time: its pixels and person segmentation once for all tracks
            cache.clear()
            rgb = lazy[f]
            cache[f] = (rgb, face_model.parser.person(rgb) if needs_person else None)
        rgb, person = cache[f]
        faces = [t.observed[f] for t in ts.tracks if f in t.observed]
        res = cmasks.region_masks(rgb, faces, regions=region_tuple, chosen=[track.observed[f]], grow=grow,
                                  grow_unit="percent", parser=face_model.parser, person=person)
        return res.mask
    return mask_of


def _pick_tracks(ts, which: str):
    """The tracks a node works on: "cast" (those given to a member), "all", a member name or 'track N'."""
    w = (which or "").strip()
    if w == "cast":
        return [t for t in ts.tracks if t.member_name is not None]
    if w == "all":
        return list(ts.tracks)
    if w.lower().startswith("track "):
        try:
            k = int(w[6:])
        except ValueError:
            raise ContinuityError(f"'{w}' is not 'track N'", input="which") from None
        picked = [t for t in ts.tracks if t.id == k]
        if not picked:
            raise ContinuityError(f"there is no track {k} (tracks 0-{len(ts.tracks) - 1})", input="which")
        return picked
    picked = ts.of_member(w)
    if not picked and w not in ts.members:
        raise ContinuityError(f"'{w}' is not a cast member ({', '.join(ts.members) or 'no cast'}); use cast, all, "
                              "a member name or 'track N'", input="which")
    return picked


def _draw_tracks(frames: torch.Tensor, ts) -> torch.Tensor:
    import cv2
    colours = [(25, 230, 50), (255, 80, 80), (80, 130, 255), (255, 200, 25), (200, 80, 255), (50, 230, 230)]
    out = torch.empty(frames.shape[:3] + (3,), dtype=torch.float32)
    lazy = _LazyFrames(frames)
    for i in range(out.shape[0]):
        img = np.ascontiguousarray(lazy[i])
        lw = max(1, round(max(img.shape[:2]) / 400))
        for t in ts.tracks:
            b = t.box(i)
            if b is None:
                continue
            c = colours[t.id % len(colours)] if t.member_name is not None else (160, 160, 160)
            x0, y0, x1, y1 = (round(v) for v in b)
            cv2.rectangle(img, (x0, y0), (x1, y1), c, lw if i in t.observed else 1)
            cv2.putText(img, f"{t.id}: {t.label()}", (x0, max(10, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35 * lw, c, lw)
        if i in ts.cuts:
            cv2.putText(img, "cut", (4, 14 * lw), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * lw, (255, 255, 0), lw)
        out[i] = torch.from_numpy(img.astype(np.float32) / 255.0)
    return out


def _tracking_inputs():
    return [
        io.Int.Input("min_face", default=24, min=0, max=4096, tooltip="Ignore faces smaller than this many pixels."),
        io.Int.Input("max_gap", default=5, min=0, max=120,
                     tooltip="A face missing for up to this many frames (hidden, missed) keeps its track; longer, "
                             "and it starts a new one."),
        io.Int.Input("samples", default=8, min=1, max=64,
                     tooltip="Frames per track embedded to recognise who it is (evenly spread; not every frame)."),
        io.Float.Input("cut_threshold", default=0.35, min=0.05, max=1.0, step=0.01,
                       tooltip="Colour-histogram change (0-1) between frames that counts as a hard cut (and at "
                               "least 3x the change around it). Tracks never cross a cut."),
    ]


def _stable_crop_inputs(default_target: int):
    return [
        io.String.Input("regions", default="face, ears, hair, beard",
                        tooltip="Regions to repaint: face (= skin, brows, eyes, nose, mouth), ears, hair, beard, "
                                "neck, glasses, hat."),
        io.Float.Input("grow", default=5.0, min=-50.0, max=100.0, step=0.5,
                       tooltip="Grow (> 0) or shrink (< 0) each face's mask, in per cent of its face box."),
        io.Float.Input("context", default=1.5, min=1.0, max=3.0, step=0.05,
                       tooltip="Crop side = the track's largest mask bounding box x this factor (one side per track)."),
        io.Int.Input("min_size", default=128, min=8, max=8192, step=8, tooltip="Smallest crop side in frame pixels."),
        io.Int.Input("target_size", default=default_target, min=64, max=4096, step=64,
                     tooltip="Side of the crops after resizing (Lanczos), a multiple of 64."),
        io.Float.Input("smoothing", default=2.0, min=0.0, max=12.0, step=0.5,
                       tooltip="Temporal smoothing of the crop centre and of the masks: Gaussian sigma in frames "
                               "(after a 5-frame running median). 0: follow every detection."),
        io.Combo.Input("padding", options=["edge", "reflect"], default="edge",
                       tooltip="Where a window crosses the frame border it is padded, never shifted."),
    ]


def _check_target(cls, target_size, **combos):
    # naming target_size (and the combos) in validate_inputs turns ComfyUI's own checks off for them
    bad = _common.validation_error(cls, {"target_size": target_size, **combos})
    if bad is not True:
        return bad
    if isinstance(target_size, int) and target_size % 64:
        return str(_common.node_error(cls, "target_size", f"{target_size} is not a multiple of 64"))
    return True


class FaceTracks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFaceTracks",
            display_name="Face Tracks (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "Faces through a shot: detected per frame, linked into tracks (box overlap, and identity where "
                "faces cross or come back), gaps of a few frames bridged, hard cuts found so no track jumps across "
                "one. With a cast, each TRACK goes to the member its pooled identity matches (never frame by frame, "
                "so identity cannot swap mid-shot); other faces are left alone and reported."),
            inputs=[
                io.Image.Input("frames", tooltip="The shot as an IMAGE batch (e.g. from Load Video)."),
                FaceModel.Input("face_model", tooltip="From Load Face Model (Continuity): finds and embeds the faces."),
                CastType.Input("cast", optional=True, tooltip="The characters to recognise (Make Cast / Load Cast)."),
                *_tracking_inputs(),
            ],
            outputs=[
                Tracks.Output("tracks", display_name="tracks", tooltip="The tracks, for the crop, fix and flicker nodes."),
                io.Image.Output("preview", display_name="preview", tooltip="The frames with each track's box and name."),
                io.String.Output("report", display_name="report", tooltip="Tracks, cuts and who is who, as text."),
            ],
        )

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, frames, face_model, min_face, max_gap, samples, cut_threshold, cast=None) -> io.NodeOutput:
        import comfy.utils
        frames = _check_frames(frames)
        pbar = comfy.utils.ProgressBar(int(frames.shape[0]))

        def progress(i, n):
            _glue.throw_if_interrupted()
            pbar.update_absolute(i, n)
        ts = run_tracking(frames, face_model, as_cast(cast), min_face=min_face, max_gap=max_gap, samples=samples,
                          cut_threshold=cut_threshold, progress=progress)
        report = "\n".join(ts.describe())
        return io.NodeOutput(ts, _draw_tracks(frames, ts), report, ui={"continuity_text": [report]})


class TrackCropSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityTrackCropSequence",
            display_name="Track Crop Sequence (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "One face track as a steady crop sequence for a video inpainting model: one crop size for the "
                "whole track, a smoothed centre (no jitter on a still face), masks smoothed the same way (empty "
                "where the face is hidden), padded at the borders. Inpaint the IMAGE + MASK batch with any video "
                "model, then Paste Track Sequence puts it back into every frame."),
            inputs=[
                io.Image.Input("frames", tooltip="The shot (the same frames Face Tracks saw)."),
                Tracks.Input("tracks", tooltip="From Face Tracks or Video Face Fix."),
                FaceModel.Input("face_model", tooltip="From Load Face Model: parses the face regions."),
                io.String.Input("which", default="track 0",
                                tooltip="The track: 'track N' (see the Face Tracks report) or a cast member's name "
                                        "(their first track)."),
                *_stable_crop_inputs(512),
            ],
            outputs=[
                io.Image.Output("crops", display_name="crops", tooltip="The track's crops, one per frame of the track."),
                io.Mask.Output("masks", display_name="masks", tooltip="The face mask of each crop."),
                TrackStitch.Output("stitch", display_name="stitch", tooltip="Windows and masks for Paste Track Sequence."),
                io.String.Output("report", display_name="report", tooltip="Which frames, crop side and scale."),
            ],
        )

    @classmethod
    def validate_inputs(cls, target_size, padding):
        return _check_target(cls, target_size, padding=padding)

    @classmethod
    @_common.reports_errors("which")
    def execute(cls, frames, tracks, face_model, which, regions, grow, context, min_size, target_size, smoothing,
                padding) -> io.NodeOutput:
        from ..continuity.tracks import crop_sequence
        from ..continuity.tracks.fix import plan_crops
        frames = _check_frames(frames)
        ts = _as_tracks(tracks, frames)
        picked = _pick_tracks(ts, which)
        if not picked:
            raise ContinuityError(f"no track for '{which}'", input="which")
        t = picked[0]
        tc = plan_crops(ts, [t], _track_masker(frames, ts, face_model, regions, grow), context=context,
                        min_size=min_size, target=target_size, sigma=smoothing, pad_mode=padding)[t.id]
        crops, masks = crop_sequence(frames, tc)
        side = tc.boxes[0].side
        report = (f"track {t.id} ({t.label()}): frames {tc.frames[0]}-{tc.frames[-1]}, crop side {side} px -> "
                  f"{target_size} (x{target_size / side:.2f}), {int((tc.masks.reshape(len(tc), -1).any(1)).sum())} "
                  f"frame(s) with a mask")
        return io.NodeOutput(torch.from_numpy(crops[..., :3]), torch.from_numpy(masks), tc, report,
                             ui={"continuity_text": [report]})


def _as_tracks(tracks, frames):
    from ..continuity.tracks import TrackSet
    if not (isinstance(tracks, TrackSet) or type(tracks).__name__ == "TrackSet"):
        raise ContinuityError(f"expected TRACKS (Face Tracks), got {type(tracks).__name__}", input="tracks")
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if tracks.n_frames != n or tuple(tracks.size) != (h, w):
        raise ContinuityError(f"the tracks are of {tracks.n_frames} frames of {tracks.size[1]}x{tracks.size[0]}, "
                              f"the frames are {n} of {w}x{h}: connect the frames the tracks were made from",
                              input="tracks")
    return tracks


class PasteTrackSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityPasteTrackSequence",
            display_name="Paste Track Sequence (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "Puts an (inpainted) crop sequence from Track Crop Sequence back into every frame of its track: only "
                "the change made to each crop, blended inside its mask; every pixel outside the masks, and every "
                "other frame, stays bit-exact."),
            inputs=[
                io.Image.Input("frames", tooltip="The shot the crops were cut from."),
                TrackStitch.Input("stitch", tooltip="From Track Crop Sequence."),
                io.Image.Input("crops", tooltip="The crops after inpainting (any size: resized back with Lanczos)."),
                io.Float.Input("feather", default=4.5, min=0.0, max=25.0, step=0.5,
                               tooltip="Blend width inside the mask, in per cent of the crop side."),
                io.Boolean.Input("colour_match", default=False,
                                 tooltip="Shift the pasted colours toward the frame's in the blend band."),
            ],
            outputs=[io.Image.Output("frames_out", display_name="frames", tooltip="The shot with the track pasted in.")],
        )

    @classmethod
    @_common.reports_errors("stitch")
    def execute(cls, frames, stitch, crops, feather, colour_match) -> io.NodeOutput:
        from ..continuity.tracks import TrackCrop, paste_sequence
        frames = _check_frames(frames)
        if not (isinstance(stitch, TrackCrop) or type(stitch).__name__ == "TrackCrop"):
            raise ContinuityError("expects the stitch output of Track Crop Sequence", input="stitch")
        if tuple(stitch.size) != (int(frames.shape[1]), int(frames.shape[2])) or stitch.frames[-1] >= frames.shape[0]:
            raise ContinuityError("these frames are not the ones the crops were cut from", input="frames")
        out = frames.detach().cpu().float().clone()
        paste_sequence(None, stitch, crops, out=out.numpy(), feather_percent=feather, colour_match=bool(colour_match),
                       check_interrupt=_glue.throw_if_interrupted)
        return io.NodeOutput(out)


def _sampler_inputs():
    import comfy.samplers
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed. Track k uses seed + k for EVERY frame, so all its frames get the same noise."),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps of each pass."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Guidance scale."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", tooltip="Sampler."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal", tooltip="Scheduler."),
        io.Float.Input("denoise_1", default=0.75, min=0.0, max=1.0, step=0.01,
                       tooltip="Pass 1 (masked inpaint) strength; 0 skips it."),
        io.Float.Input("denoise_2", default=0.40, min=0.0, max=1.0, step=0.01,
                       tooltip="Pass 2 (whole crop, low denoise) strength; 0 skips it."),
    ]


class VideoFaceFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityVideoFaceFix",
            display_name="Video Face Fix (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "The face fix through a whole shot: faces are tracked (as Face Tracks), each track gets steady "
                "crop windows (one size, smoothed centre, smoothed masks), and every frame of a track goes through "
                "the still face fix's two passes with its cast member's LoRA and prompt and the SAME seed and noise, "
                "so an image model gives a stable result; optionally each frame's pass-2 input is blended toward the "
                "previous frame's result. Outside the masks every frame stays bit-exact. Progress per face-frame; "
                "Cancel stops between frames."),
            inputs=[
                FaceModel.Input("face_model", tooltip="From Load Face Model (Continuity): finds, parses and embeds faces."),
                io.Image.Input("frames", tooltip="The shot as an IMAGE batch."),
                io.Model.Input("model", tooltip="The checkpoint; each member's latest LoRA is applied to it."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the crops and decodes the result."),
                CastType.Input("cast", optional=True,
                               tooltip="The characters (Make Cast / Load Cast): each track is fixed with its member's "
                                       "LoRA and trigger word; faces of no member are left alone."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The checkpoint's CLIP: the prompt is encoded per member, its trigger word and "
                                      "class phrase first. Or connect positive instead."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Positive conditioning for every track (instead of clip + prompt)."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="Prompt text, encoded with clip for each member."),
                io.Float.Input("lora_strength", default=0.8, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="Strength of each member's latest LoRA (from the loras folder); 0: none."),
                io.Combo.Input("which", options=["cast", "all"], default="cast",
                               tooltip="cast: only the tracks of cast members; all: every track (unknown faces with "
                                       "the plain model and prompt)."),
                *_tracking_inputs(),
                *_stable_crop_inputs(1024),
                *_sampler_inputs(),
                io.Float.Input("temporal_blend", default=0.0, min=0.0, max=0.9, step=0.05,
                               tooltip="Blend each frame's pass-2 input latent this far toward the previous frame's "
                                       "result (the crops are steady, so they line up): steadier, a little softer "
                                       "on fast motion. 0: off."),
                io.Float.Input("feather", default=4.5, min=0.0, max=25.0, step=0.5,
                               tooltip="Blend width inside the mask, in per cent of the crop side."),
                io.Boolean.Input("colour_match", default=False, tooltip="Match colours in the blend band."),
                io.Model.Input("model_2", optional=True, tooltip="Optional model for pass 2 (the member's LoRA too)."),
            ],
            outputs=[
                io.Image.Output("fixed", display_name="frames", tooltip="The shot with the faces fixed."),
                io.Mask.Output("masks", display_name="masks", tooltip="Per frame, the union of the masks used."),
                Tracks.Output("tracks", display_name="tracks", tooltip="The tracks with their crop windows, for Flicker Report."),
                io.String.Output("report", display_name="report", tooltip="Tracks, members, LoRAs, prompts, frames fixed."),
            ],
        )

    @classmethod
    def validate_inputs(cls, target_size, which, padding, sampler_name, scheduler):
        return _check_target(cls, target_size, which=which, padding=padding, sampler_name=sampler_name,
                             scheduler=scheduler)

    @classmethod
    @_common.reports_errors("frames")
    def execute(cls, face_model, frames, model, negative, vae, which, min_face, max_gap, samples, cut_threshold,
                regions, grow, context, min_size, target_size, smoothing, padding, seed, steps, cfg, sampler_name,
                scheduler, denoise_1, denoise_2, temporal_blend, feather, colour_match, cast=None, clip=None,
                positive=None, prompt="", lora_strength=0.8, model_2=None) -> io.NodeOutput:
        import comfy.utils
        from ..continuity.tracks.fix import fix_shot, plan_crops
        frames = _check_frames(frames)
        cast = as_cast(cast)
        if which == "cast" and cast is None:
            raise ContinuityError("which is 'cast' but no cast is connected: connect Make Cast / Load Cast, or "
                                  "choose all", input="cast")
        pbar = comfy.utils.ProgressBar(int(frames.shape[0]))

        def tracking_progress(i, n):
            _glue.throw_if_interrupted()
            pbar.update_absolute(i, n)
        ts = run_tracking(frames, face_model, cast, min_face=min_face, max_gap=max_gap, samples=samples,
                          cut_threshold=cut_threshold, progress=tracking_progress)
        picked = _pick_tracks(ts, which)
        lines = ts.describe()
        conds = _member_conditioning(cast, picked, model, model_2, positive, clip, prompt or "", float(lora_strength),
                                     lines)
        crops = plan_crops(ts, picked, _track_masker(frames, ts, face_model, regions, grow), context=context,
                           min_size=min_size, target=target_size, sigma=smoothing, pad_mode=padding)
        ts.crops.update(crops)
        out = frames.detach().cpu().float().clone()
        inpaint = _frame_inpainter(conds, negative, vae, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                                   scheduler=scheduler, denoise_1=denoise_1, denoise_2=denoise_2,
                                   temporal_blend=temporal_blend)
        fpbar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            fpbar.update_absolute(done, total)
        res = fix_shot(out.numpy(), ts, picked, crops, inpaint, feather_percent=feather,
                       colour_match=bool(colour_match), progress=progress)
        masks = torch.zeros(out.shape[:3])
        for t in picked:
            tc = crops[t.id]
            for k, f in enumerate(tc.frames):
                if tc.masks[k].any():
                    masks[f] = torch.maximum(masks[f], torch.from_numpy(tc.full_mask(k)))
        for t in picked:
            lines.append(f"track {t.id} ({t.label()}): {res.fixed_frames.get(t.id, 0)} frame(s) fixed, seed {seed + t.id}, "
                         f"crop side {crops[t.id].boxes[0].side} px")
        report = "\n".join(lines + [f"face-frames fixed: {sum(res.fixed_frames.values())}"])
        return io.NodeOutput(out, masks, ts, report, ui={"continuity_text": [report]})


def _member_conditioning(cast, tracks, model, model_2, positive, clip, prompt, strength, lines):
    """Per member index (None: unknown faces): (model, model_2, positive), each worked out once."""
    out = {}
    for key in sorted({t.member for t in tracks}, key=lambda m: -1 if m is None else m):
        char = cast.members[key] if (cast is not None and key is not None) else None
        out[key] = _glue.character_conditioning(char, model, model_2, positive, clip, prompt, strength, lines)
    return out


def _frame_inpainter(conds, negative, vae, *, seed, steps, cfg, sampler_name, scheduler, denoise_1, denoise_2,
                     temporal_blend):
    """inpaint(crop, mask, track, k) for the core's fix_shot: the still fix's two passes, one seed per track."""
    previous: dict[int, torch.Tensor] = {}

    def inpaint(crop, mask, track, k):
        _glue.throw_if_interrupted()
        m, m2, pos = conds[track.member]

        def blend(latent):
            prev = previous.get(track.id)
            if temporal_blend > 0 and prev is not None and prev.shape == latent["samples"].shape:
                latent = dict(latent, samples=latent["samples"] * (1 - temporal_blend) + prev * temporal_blend)
            return latent
        img, latent = _glue.two_pass_inpaint(m, pos, negative, vae, torch.from_numpy(np.ascontiguousarray(crop))[None],
                                       torch.from_numpy(np.ascontiguousarray(mask))[None], seed + track.id, steps, cfg,
                                       sampler_name, scheduler, denoise_1, denoise_2, m2, before_pass_2=blend)
        previous[track.id] = latent["samples"].detach()
        return img[0].cpu().float().numpy()
    return inpaint


class FlickerReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFlickerReport",
            display_name="Flicker Report (Continuity)",
            category=f"{CATEGORY}/video",
            description=(
                "Per face track, before and after a fix: identity over the frames (mean, std, worst frames) and "
                "the change inside the face from frame to frame that motion does not explain (optical flow from "
                "the input compensates the motion). 'Stable' is calibrated on the unfixed input: a fixed track is "
                "stable when its change stays within the input's mean + 2 std. Plots: identity per frame per "
                "character, and change per frame before/after."),
            inputs=[
                io.Image.Input("before", tooltip="The shot before the fix."),
                io.Image.Input("after", tooltip="The shot after the fix (same frames)."),
                Tracks.Input("tracks", tooltip="From Video Face Fix (its crop windows are reused) or Face Tracks."),
                FaceModel.Input("face_model", tooltip="Finds and embeds the faces for the identity figures."),
                CastType.Input("cast", optional=True, tooltip="The cast the tracks were given to (identity figures)."),
                io.Combo.Input("method", options=["farneback", "dis"], default="farneback",
                               tooltip="Optical flow (OpenCV, nothing to download)."),
                io.Int.Input("identity_stride", default=1, min=1, max=64,
                             tooltip="Measure identity on every n-th frame of each track (faster on long shots)."),
            ],
            outputs=[
                io.String.Output("report", display_name="report", tooltip="The figures per track, as text."),
                io.Image.Output("plot", display_name="plot", tooltip="Identity per frame per character; change before/after."),
                io.String.Output("json", display_name="json", tooltip="All figures as JSON."),
            ],
        )

    @classmethod
    def validate_inputs(cls, method):
        return _common.validation_error(cls, {"method": method})

    @classmethod
    @_common.reports_errors("tracks")
    def execute(cls, before, after, tracks, face_model, method, identity_stride, cast=None) -> io.NodeOutput:
        import json

        from ..continuity.tracks import TrackFlicker, identity_series, stable_track_crop, temporal_change
        before, after = _check_frames(before, "before"), _check_frames(after, "after")
        if before.shape != after.shape:
            raise ContinuityError(f"before is {tuple(before.shape)} and after {tuple(after.shape)}; give the same "
                                  "frames before and after the fix", input="after")
        ts = _as_tracks(tracks, before)
        cast = as_cast(cast)
        score, _, names, embed = _cast_scoring(cast, face_model)
        tracked = [t for t in ts.tracks if t.id in ts.crops] or list(ts.tracks)
        results = []
        lb, la = _LazyFrames(before), _LazyFrames(after)
        for t in tracked:
            _glue.throw_if_interrupted()
            tc = ts.crops.get(t.id) or stable_track_crop(t, ts.size, lambda f: None)
            fl = TrackFlicker(t.id, t.member_name, list(tc.frames))
            fl.change_before, fl.change_after = temporal_change(lb, la, tc, method=method)
            if score is not None and t.member is not None:
                def member_score(e, j=t.member):
                    return score(e)[:, j]

                def faces_at(rgb, i):
                    return face_model.detect(rgb, image_index=i)
                fl.identity_before = identity_series(lb, tc, faces_at, embed, member_score, identity_stride)
                fl.identity_after = identity_series(la, tc, faces_at, embed, member_score, identity_stride)
            results.append(fl)
        report = "\n".join([fl.describe() for fl in results] or ["no tracks"])
        plot = _flicker_plot(results, ts.n_frames)
        doc = json.dumps({"tracks": [fl.to_dict() for fl in results], "members": names}, default=float)
        return io.NodeOutput(report, plot, doc, ui={"continuity_text": [report]})


def _flicker_plot(results, n_frames: int) -> torch.Tensor:
    def spread(fl, vals):
        row: list[float | None] = [None] * n_frames
        for f, v in zip(fl.frames, vals):
            row[f] = v
        return row
    ident = {}
    change = {}
    for fl in results:
        who = fl.member or f"track {fl.track_id}"
        if any(v is not None for v in fl.identity_before):
            ident[f"{who} before"] = spread(fl, fl.identity_before)
            ident[f"{who} after"] = spread(fl, fl.identity_after)
        change[f"{who} before"] = spread(fl, fl.change_before)
        change[f"{who} after"] = spread(fl, fl.change_after)
    panels = []
    if ident:
        panels.append(plots.time_plot(ident, title="Identity per frame", ylabel="identity similarity"))
    panels.append(plots.time_plot(change or {"no track": [None] * n_frames},
                                  title="Change inside the face after motion compensation (flicker)",
                                  ylabel="grey levels"))
    w = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 0), (0, w - p.shape[1]), (0, 0)), constant_values=1.0) for p in panels]
    return _common.np_to_image(np.concatenate(panels, axis=0))


NODES = [IdentityOverFrames, MotionIntensity, FaceTracks, TrackCropSequence, PasteTrackSequence, VideoFaceFix,
         FlickerReport]
