"""Identity scoring nodes (V3 adapters over ``continuity.scoring`` and ``continuity.faces.embedders``)."""
from __future__ import annotations

import os

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..continuity import limits
from ..continuity.errors import ContinuityError, MissingModelError
from ..continuity.faces import embedders
from ..continuity.faces.base import as_uint8_rgb
from ..continuity.paths import confine, safe_name
from ..continuity.scoring import calibration, plots, report
from ..continuity.scoring.similarity import POLICIES, ScoreSet, get_face_detector, score_set
from . import _common, _glue
from ._types import CATEGORY, Character, FaceModel, Scores

MODEL_CHOICES = list(embedders.NAMES) + ["all available"]
POLICY_TOOLTIP = ("Which face of a candidate to score when there are several: largest; in_mask (the face "
                  "inside candidate_masks, e.g. the one you inpainted); only_one (images with several faces "
                  "get no score and a flag).")


def to_uint8_list(images, input: str = "images") -> list[np.ndarray]:
    """The images as uint8 arrays, each within the analysis bounds (continuity.limits) or refused naming ``input``."""
    split = _common.split_images(images)
    limits.check_images(split, input=input)
    return [as_uint8_rgb(t.detach().cpu().numpy()) for t in split]


def resolve_embedders(model: str) -> tuple[list, dict[str, str]]:
    """The embedders to run and, for "all available", why the others did not run."""
    mdir = _common.models_dir()
    if model != "all available":
        return [embedders.get_embedder(model, models_dir=mdir, device=_glue.torch_device())], {}
    out, skipped = [], {}
    for a in embedders.availability(mdir):
        if not a.available:
            skipped[a.name] = a.reason
            continue
        try:
            out.append(embedders.get_embedder(a.name, models_dir=mdir, device=_glue.torch_device()))
        except MissingModelError as exc:
            skipped[a.name] = exc.message
    return out, skipped


def character_of(character):
    """The CHARACTER of an optional ``character`` input (a list of one for is_input_list nodes), or None."""
    from ..continuity.character import as_character
    return as_character(_glue.first(character))


def references_for(char, references, *, node: str = "this node") -> tuple[list[np.ndarray], list[str] | None]:
    """(reference portraits as uint8 RGB, their names or None): the character's portraits when a CHARACTER is
    connected (they replace the ``references`` input), else the ``references`` input; an error when neither."""
    if char is not None:
        paths = char.reference_images()
        if paths:
            return [as_uint8_rgb(a) for a in char.load_reference_images()], [os.path.basename(p) for p in paths]
        if not references:
            raise ContinuityError(f"the profile '{char.name}' has no reference portraits; add some with Save "
                                  "Character or connect references", input="character")
    refs = to_uint8_list(references, "references") if references is not None else []
    if not refs:
        raise ContinuityError(f"{node} needs reference portraits: connect references or a character "
                              "(Load Character)", input="references")
    return refs, None


def apply_character_thresholds(s: ScoreSet, char) -> None:
    """Each model's threshold becomes the character's for that model (else its default, else the model's own)."""
    if char is None:
        return
    for name, ms in s.models.items():
        ms.threshold = float(char.threshold(name, ms.threshold))


def describe(s: ScoreSet) -> str:
    lines = [f"set '{s.name}': {s.n} candidate(s)"]
    for name, ms in s.models.items():
        base = ms.baseline
        lines.append(f"[{name}] threshold {ms.threshold:.3f} (cosine; >= means same person), references among "
                     f"themselves {'-' if base is None else f'{base:.3f}'}")
        for r in ms.rows():
            f = s.filenames[r["index"]] if r["index"] < len(s.filenames) else f"#{r['index']}"
            if r["mean"] is None:
                lines.append(f"  {f}: no score ({r['note']})")
            else:
                cal = "" if r["calibrated"] is None else f", calibrated {r['calibrated']:+.2f}"
                lines.append(f"  {f}: mean {r['mean']:.3f} max {r['max']:.3f} -> "
                             f"{'same person' if r['same_person'] else 'different'}{cal}"
                             + (f" ({r['faces']} faces, used #{r['face_used']})" if r["faces"] > 1 else ""))
    for name, why in s.unavailable.items():
        lines.append(f"[{name}] not run: {why}")
    return "\n".join(lines)


def candidate_table(s: ScoreSet) -> dict:
    """The per-candidate table the web extension draws on the node (ui 'continuity_table')."""
    rows = []
    for model, ms in s.models.items():
        cal = [ms.calibrated(m) for m in ms.mean]
        for i, cand in enumerate(ms.candidates):
            name = s.filenames[i] if i < len(s.filenames) else f"#{i}"
            verdict = None if ms.mean[i] is None else bool(ms.mean[i] >= ms.threshold)
            rows.append([name, model, bool(cand.found), ms.mean[i], ms.max[i], cal[i], verdict])
    return {"title": f"{s.name}: similarity to the references", "flags": [False, False, True, False, False, False, True],
            "columns": ["candidate", "model", "face", "mean", "max", "calibrated", "passes"], "rows": rows}


def summary_table(rows: list[dict], title: str) -> dict:
    cols = list(report.TABLE_COLUMNS)
    return {"title": title, "columns": cols, "rows": [[r.get(c) for c in cols] for r in rows]}


def output_file_entry(path: str) -> dict | None:
    """A saved file as ComfyUI's history lists outputs (so /view and API clients can fetch it)."""
    root = os.path.realpath(_common.output_dir())
    real = os.path.realpath(path)
    if not path or os.path.commonpath([real, root]) != root:
        return None
    sub, name = os.path.split(os.path.relpath(real, root))
    return {"filename": name, "subfolder": sub.replace(os.sep, "/"), "type": "output"}


class FaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFaceSimilarity",
            display_name="Face Similarity (Continuity)",
            category=f"{CATEGORY}/scoring",
            description=(
                "Cosine similarity of each candidate's face to each reference portrait, per identity model, "
                "with the model's own threshold and the references' similarity among themselves as baseline. "
                "A candidate without a face gets no score and a flag; a reference without a face is an error. "
                "Each image is detected and embedded once per model (cached by content)."),
            is_input_list=True,
            inputs=[
                io.Image.Input("references", optional=True,
                               tooltip="Reference portraits of the character (a batch or a list of any sizes); each must "
                                       "show a face. Optional when a character is connected."),
                io.Image.Input("candidates", tooltip="Images to score (a batch or a list of any sizes)."),
                io.Combo.Input("model", options=MODEL_CHOICES, default="dlib",
                               tooltip="Identity model: dlib (built in), arcface (insightface ONNX in models/insightface), "
                                       "facenet/openface/deepid (DeepFace weight files in models/deepface), or all "
                                       "that are available here."),
                io.Combo.Input("face_policy", options=list(POLICIES), default="largest", tooltip=POLICY_TOOLTIP),
                io.String.Input("set_name", default="set", tooltip="Name of this candidate set in reports, e.g. '2-step + inpaint'."),
                io.Mask.Input("candidate_masks", optional=True,
                              tooltip="Optional masks, one per candidate, for face_policy in_mask."),
                io.String.Input("filenames", optional=True, force_input=True,
                                tooltip="Optional names of the candidates (e.g. from Load Image Folder), kept in the scores."),
                io.String.Input("reference_names", optional=True, force_input=True,
                                tooltip="Optional names of the references, used in error messages."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="Optional face-analysis backend whose detector finds the faces (default: dlib)."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, its reference portraits "
                                        "replace references and its threshold per model (else its default threshold) "
                                        "replaces the model's own in the verdicts."),
            ],
            outputs=[
                Scores.Output("scores", display_name="scores", tooltip="All scores of this set (for Select By Similarity and Consistency Report)."),
                io.String.Output("report", display_name="report", tooltip="Per-candidate scores and verdicts as text."),
                io.Int.Output("faces_missing", display_name="faces_missing", tooltip="Number of candidates in which no face was used."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model, face_policy):
        return _common.validation_error(cls, {"model": model, "face_policy": face_policy})

    @classmethod
    @_common.reports_errors("candidates")
    def execute(cls, candidates, model, face_policy, set_name, references=None, candidate_masks=None,
                filenames=None, reference_names=None, face_model=None, character=None) -> io.NodeOutput:
        model, policy, name = _glue.first(model), _glue.first(face_policy), _glue.first(set_name, "set")
        char = character_of(character)
        refs, char_ref_names = references_for(char, references, node="Face Similarity")
        if char_ref_names is not None:
            reference_names = char_ref_names
        cands = to_uint8_list(candidates, "candidates")
        masks = [m.detach().cpu().numpy() for m in _common.split_masks(candidate_masks)] if candidate_masks else None
        if policy == "in_mask" and not masks:
            raise ContinuityError("face_policy in_mask needs candidate_masks", input="candidate_masks")
        if masks and len(masks) not in (1, len(cands)):
            raise ContinuityError(f"{len(masks)} masks for {len(cands)} candidates", input="candidate_masks")
        if masks and len(masks) == 1 and len(cands) > 1:
            masks = masks * len(cands)
        names = list(filenames) if filenames else [f"#{i}" for i in range(len(cands))]
        if len(names) != len(cands):
            raise ContinuityError(f"{len(names)} file names for {len(cands)} candidates", input="filenames")
        fm = _glue.first(face_model)
        detector = fm.detector if fm is not None and hasattr(fm, "detector") else get_face_detector("dlib")
        embs, skipped = resolve_embedders(model)
        if not embs:
            raise ContinuityError("no identity model is available: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                                  input="model")
        import comfy.utils
        pbar = comfy.utils.ProgressBar(len(cands) * len(embs))
        done = {"n": 0}

        def progress(i, n):
            _glue.throw_if_interrupted()
            done["n"] += 1
            pbar.update_absolute(min(done["n"], len(cands) * len(embs)))

        s = score_set(refs, cands, embs, name=name, filenames=names, policy=policy, masks=masks,
                      reference_names=list(reference_names) if reference_names else None, detector=detector,
                      progress=progress)
        s.unavailable = skipped
        apply_character_thresholds(s, char)
        missing = sum(1 for c in next(iter(s.models.values())).candidates if not c.found)
        text = describe(s)
        return io.NodeOutput(s, text, missing, ui={"text": [text], "continuity_table": [candidate_table(s)]})


class IdentityModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityIdentityModels",
            display_name="Identity Models (Continuity)",
            category=f"{CATEGORY}/scoring",
            description="Lists the identity models, their thresholds, and whether their weights are installed here.",
            inputs=[],
            outputs=[io.String.Output("models", display_name="models", tooltip="One line per model: available or what is missing.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return str([(a.name, a.available, a.reason) for a in embedders.availability(_common.models_dir())])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        lines = []
        for a in embedders.availability(_common.models_dir()):
            state = "available" if a.available else "not available"
            lines.append(f"{a.name} ({a.label}), threshold {a.threshold}: {state} - {a.reason}")
        text = "\n".join(lines)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


def _metric_values(s: ScoreSet, model: str, metric: str) -> tuple[str, list[float | None], float]:
    if not s.models:
        raise ContinuityError("the scores hold no model", input="scores")
    key = model.strip() or next(iter(s.models))
    if key not in s.models:
        raise ContinuityError(f"the scores have no model '{key}' (they have {', '.join(s.models)})", input="model")
    ms = s.models[key]
    if metric == "mean":
        return key, ms.mean, ms.threshold
    if metric == "max":
        return key, ms.max, ms.threshold
    if ms.baseline is None:
        raise ContinuityError("calibrated needs at least 2 references (their similarity is the scale)", input="metric")
    return key, [ms.calibrated(v) for v in ms.mean], 0.0


class SelectBySimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuitySelectBySimilarity",
            display_name="Select By Similarity (Continuity)",
            category=f"{CATEGORY}/scoring",
            description=(
                "Splits the scored images by a similarity threshold, keeping their indices and file names: "
                "the passing ones go on into the dataset, the failing ones (and those with no face) to the face fix."),
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The candidate images that were scored, in the same order."),
                Scores.Input("scores", tooltip="Scores from Face Similarity."),
                io.Combo.Input("metric", options=["mean", "max", "calibrated"], default="mean",
                               tooltip="mean/max: cosine over the references. calibrated: 0 at the model's threshold, "
                                       "1 when as close as the references are to each other."),
                io.Boolean.Input("use_model_threshold", default=True,
                                 tooltip="Use the model's own threshold (0 for calibrated) instead of the value below."),
                io.Float.Input("threshold", default=0.93, min=-2.0, max=2.0, step=0.005,
                               tooltip="Pass when the metric is at least this (used when use_model_threshold is off)."),
                io.String.Input("model", default="", tooltip="Which model's scores to use; empty: the first."),
                io.String.Input("filenames", optional=True, force_input=True,
                                tooltip="Names of the images; default: the names kept in the scores."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, its threshold for the "
                                        "model (else its default threshold, else the model's own) replaces "
                                        "use_model_threshold and threshold (for calibrated: that threshold on the "
                                        "calibrated scale)."),
            ],
            outputs=[
                io.Image.Output("passed", display_name="passed", is_output_list=True, tooltip="Images at or above the threshold."),
                io.Image.Output("failed", display_name="failed", is_output_list=True, tooltip="Images below it or without a face."),
                io.Int.Output("passed_indices", display_name="passed_indices", is_output_list=True, tooltip="Indices of the passing images."),
                io.Int.Output("failed_indices", display_name="failed_indices", is_output_list=True, tooltip="Indices of the failing images."),
                io.String.Output("passed_names", display_name="passed_names", is_output_list=True, tooltip="File names of the passing images."),
                io.String.Output("failed_names", display_name="failed_names", is_output_list=True, tooltip="File names of the failing images."),
                io.String.Output("report", display_name="report", tooltip="What was kept and why."),
            ],
        )

    @classmethod
    def validate_inputs(cls, metric):
        return _common.validation_error(cls, {"metric": metric})

    @classmethod
    @_common.reports_errors("scores")
    def execute(cls, images, scores, metric, use_model_threshold, threshold, model, filenames=None,
                character=None) -> io.NodeOutput:
        s = _glue.first(scores)
        if not isinstance(s, ScoreSet):
            raise ContinuityError("expected the scores output of Face Similarity", input="scores")
        metric, model = _glue.first(metric), _glue.first(model, "")
        char = character_of(character)
        imgs = _common.split_images(images)
        key, vals, model_thr = _metric_values(s, model, metric)
        thr = model_thr if _glue.first(use_model_threshold) else float(_glue.first(threshold))
        source = ""
        if char is not None:   # the character's threshold replaces use_model_threshold / threshold
            ms = s.models[key]
            t = char.threshold(key, ms.threshold)
            thr = float(t) if metric != "calibrated" else ms.calibrated(float(t))
            if thr is None:
                raise ContinuityError("calibrated needs the references to be closer to each other than the "
                                      "character's threshold", input="character")
            source = f" (threshold of character '{char.name}')"
        if len(imgs) != len(vals):
            raise ContinuityError(f"{len(imgs)} images but the scores are for {len(vals)}", input="images")
        names = list(filenames) if filenames else (s.filenames or [f"#{i}" for i in range(len(imgs))])
        if len(names) != len(imgs):
            raise ContinuityError(f"{len(names)} file names for {len(imgs)} images", input="filenames")
        p_i = [i for i, v in enumerate(vals) if v is not None and v >= thr]
        f_i = [i for i in range(len(vals)) if i not in set(p_i)]
        text = (f"{key} {metric} >= {thr:.4f}{source}: {len(p_i)} passed, {len(f_i)} failed "
                f"({sum(1 for v in vals if v is None)} without a face)\n"
                + "\n".join(f"  {names[i]}: {'-' if vals[i] is None else f'{vals[i]:.4f}'} "
                            f"{'pass' if i in p_i else 'fail'}" for i in range(len(vals))))
        return io.NodeOutput([imgs[i][None] for i in p_i], [imgs[i][None] for i in f_i], p_i, f_i,
                             [names[i] for i in p_i], [names[i] for i in f_i], text, ui=ui.PreviewText(text))


class ConsistencyReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityConsistencyReport",
            display_name="Consistency Report (Continuity)",
            category=f"{CATEGORY}/scoring",
            description=(
                "Combines the scores of several named candidate sets (each from a Face Similarity node, each with "
                "one or more models) into a table (mean, standard deviation, count, faces missing), a bar chart "
                "per set and model, an embedding heatmap and line plot, and JSON + CSV files in the output folder "
                "(never overwriting earlier reports)."),
            inputs=[Scores.Input("scores_1", tooltip="Scores of the first set.")]
            + [Scores.Input(f"scores_{k}", optional=True, tooltip=f"Scores of set {k} (optional).") for k in range(2, 7)]
            + [
                io.String.Input("plot_model", default="",
                                tooltip="Model whose embeddings the heatmap and line plot show; empty: the first."),
                io.Boolean.Input("save", default=True, tooltip="Write the JSON and CSV report files."),
                io.String.Input("filename_prefix", default="continuity/reports/consistency",
                                tooltip="Path under ComfyUI's output folder; an existing report is never overwritten "
                                        "(a number is added)."),
            ],
            outputs=[
                io.Image.Output("bar_chart", display_name="bar_chart", tooltip="Mean similarity per set and model, with standard deviation."),
                io.Image.Output("heatmap", display_name="heatmap", tooltip="Embeddings of the references and each set, one row per image."),
                io.Image.Output("lines", display_name="lines", tooltip="Embeddings as lines, set means in bold."),
                io.String.Output("table", display_name="table", tooltip="The summary table as text."),
                io.String.Output("json_path", display_name="json_path", tooltip="Path of the JSON report ('' when not saved)."),
                io.String.Output("csv_path", display_name="csv_path", tooltip="Path of the CSV report ('' when not saved)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def _target(cls, prefix: str) -> tuple[str, str]:
        prefix = prefix.strip().replace("\\", "/")
        sub, stem = os.path.split(prefix)
        stem = safe_name(stem or "consistency", input="filename_prefix")
        root = _common.output_dir()
        folder = confine(sub or ".", [root], input="filename_prefix")
        return folder, stem

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        if filename_prefix is None:
            return True
        bad = _common.validation_error(cls, {"filename_prefix": filename_prefix})
        if bad is not True:
            return bad
        try:
            cls._target(filename_prefix)
        except ContinuityError as exc:
            return str(_common.node_error(cls, "filename_prefix", exc.message))
        return True

    @classmethod
    @_common.reports_errors("scores_1")
    def execute(cls, scores_1, plot_model, save, filename_prefix, scores_2=None, scores_3=None, scores_4=None,
                scores_5=None, scores_6=None) -> io.NodeOutput:
        sets: list[ScoreSet] = []
        seen: dict[str, int] = {}
        for k, s in enumerate([scores_1, scores_2, scores_3, scores_4, scores_5, scores_6], start=1):
            if s is None:
                continue
            if not isinstance(s, ScoreSet):
                raise ContinuityError("expected the scores output of Face Similarity", input=f"scores_{k}")
            if s.name in seen:   # two sets with one name: keep both, distinguishable
                seen[s.name] += 1
                s = ScoreSet(f"{s.name} ({seen[s.name]})", s.models, s.filenames, s.unavailable)
            else:
                seen[s.name] = 1
            sets.append(s)
        rows = report.table(sets)
        models = list(dict.fromkeys(m for s in sets for m in s.models))
        pm = plot_model.strip() or models[0]
        if pm not in models:
            raise ContinuityError(f"no set was scored with '{pm}' (models: {', '.join(models)})", input="plot_model")
        groups = report.embeddings_by_set(sets, pm)
        bar = plots.bar_chart(rows)
        heat = plots.embedding_heatmap(groups, title=f"Face embeddings ({pm}): references and candidate sets")
        lines = plots.embedding_lines(groups, title=f"Face embeddings ({pm})")
        text = report.table_text(rows)
        json_path = csv_path = ""
        if save:
            folder, stem = cls._target(filename_prefix)
            json_path, csv_path = report.write_report(sets, folder, stem)
        imgs = [_common.np_to_image(a) for a in (bar, heat, lines)]
        preview = torch.cat(imgs) if len({tuple(i.shape) for i in imgs}) == 1 else imgs[0]
        shown = ui.PreviewImage(preview, cls=cls).as_dict()
        shown["continuity_table"] = [summary_table(rows, "Consistency: mean similarity per set and model")]
        files = [e for e in (output_file_entry(json_path), output_file_entry(csv_path)) if e]
        if files:
            shown["continuity_files"] = files
        return io.NodeOutput(imgs[0], imgs[1], imgs[2], text, json_path, csv_path, ui=shown)


def clip_image_embeds(clip_vision, images: list[torch.Tensor]) -> torch.Tensor:
    """(n, d) L2-normalised image embeddings (each image encoded once; any sizes)."""
    out = []
    for im in images:
        e = clip_vision.encode_image(im[None] if im.ndim == 3 else im, crop=True)["image_embeds"].float()
        out.append(torch.nn.functional.normalize(e.reshape(e.shape[0], -1), dim=-1))
    return torch.cat(out)


def clip_text_embed(clip, prompt: str) -> torch.Tensor:
    """(1, d) L2-normalised projected pooled text embedding."""
    tokens = clip.tokenize(prompt)
    cs = clip.cond_stage_model
    cs.reset_clip_options()
    try:
        cs.set_clip_options({"projected_pooled": True})
        clip.load_model()
        _, pooled = cs.encode_token_weights(tokens)[:2]
    finally:
        cs.reset_clip_options()
    return torch.nn.functional.normalize(pooled.float().reshape(pooled.shape[0], -1)[:1], dim=-1)


def clip_similarity(clip_vision, references: list[torch.Tensor], candidates: list[torch.Tensor], clip=None,
                    prompt: str = ""):
    """CLIP-I (or DINO) image-to-reference and CLIP-T image-to-prompt cosine similarities.

    Returns (per-candidate mean cosine to the references, per-candidate cosine to the prompt or None).
    """
    with torch.inference_mode():
        return _clip_similarity(clip_vision, references, candidates, clip, prompt)


def _clip_similarity(clip_vision, references, candidates, clip, prompt):
    ref_e = clip_image_embeds(clip_vision, references)
    cand_e = clip_image_embeds(clip_vision, candidates)
    img_sim = (cand_e @ ref_e.T).mean(dim=1)
    txt_sim = None
    if clip is not None and prompt.strip():
        t = clip_text_embed(clip, prompt)
        if t.shape[-1] != cand_e.shape[-1]:
            raise ContinuityError(
                f"the text embedding has {t.shape[-1]} dimensions but the image embedding {cand_e.shape[-1]}: "
                "CLIP-T needs the text encoder that belongs to the CLIP vision model (e.g. CLIP-L with ViT-L/14)",
                input="clip")
        txt_sim = (cand_e @ t.T)[:, 0]
    return img_sim, txt_sim


class ClipSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityClipSimilarity",
            display_name="CLIP / DINO Similarity (Continuity)",
            category=f"{CATEGORY}/scoring",
            description=(
                "Whole-image metrics of the DreamShot and MotionCharacter papers through ComfyUI's own encoders: "
                "CLIP-I (cosine of CLIP image embeddings to the references), CLIP-T (image to prompt, needs the "
                "matching CLIP text encoder) and DINO similarity (load a DINOv2 model with Load CLIP Vision)."),
            is_input_list=True,
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="A CLIP vision (CLIP-I, CLIP-T) or DINOv2 (DINO) model."),
                io.Image.Input("references", tooltip="Reference images (real photos of the character)."),
                io.Image.Input("candidates", tooltip="Images to score."),
                io.Clip.Input("clip", optional=True, tooltip="The CLIP text encoder matching the vision model, for CLIP-T."),
                io.String.Input("prompt", default="", multiline=True, tooltip="The prompt for CLIP-T (empty: no CLIP-T)."),
            ],
            outputs=[
                io.Float.Output("image_similarity", display_name="image_similarity", tooltip="Mean over candidates of the mean cosine to the references (CLIP-I / DINO)."),
                io.Float.Output("text_similarity", display_name="text_similarity", tooltip="Mean cosine of the candidates to the prompt (CLIP-T); 0 when not computed."),
                io.String.Output("report", display_name="report", tooltip="Per-candidate values as text."),
            ],
        )

    @classmethod
    @_common.reports_errors("candidates")
    def execute(cls, clip_vision, references, candidates, prompt, clip=None) -> io.NodeOutput:
        cv, cl, pr = _glue.first(clip_vision), _glue.first(clip), _glue.first(prompt, "")
        refs = _common.split_images(references)
        cands = _common.split_images(candidates)
        if not refs or not cands:
            raise ContinuityError("give at least one reference and one candidate", input="references" if not refs else "candidates")
        img_sim, txt_sim = clip_similarity(cv, refs, cands, cl, pr)
        img_vals = [float(v) for v in img_sim]
        txt_vals = [float(v) for v in txt_sim] if txt_sim is not None else []
        lines = [f"#{i}: image {v:.4f}" + (f", text {txt_vals[i]:.4f}" if txt_vals else "") for i, v in enumerate(img_vals)]
        text = "\n".join(lines)
        return io.NodeOutput(float(np.mean(img_vals)), float(np.mean(txt_vals)) if txt_vals else 0.0, text,
                             ui=ui.PreviewText(text))


class CalibrateIdentityModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityCalibrateIdentityModel",
            display_name="Check Identity Model (Continuity)",
            category=f"{CATEGORY}/scoring",
            description=(
                "Checks an identity model on your own labelled pairs: a folder under the input directory with the "
                "photos and a CSV (file_x,file_y,Decision with Yes/No). Gives the ROC AUC, the accuracy at the "
                "model's own threshold, and a histogram of same-person and different-person similarities."),
            inputs=[
                io.String.Input("folder", default="continuity/pairs",
                                tooltip="Folder inside ComfyUI's input directory holding the photos and the CSV."),
                io.String.Input("pairs_file", default="pairs.csv", tooltip="Name of the CSV file in that folder."),
                io.Combo.Input("model", options=list(embedders.NAMES), default="dlib", tooltip="Identity model to check."),
            ],
            outputs=[
                io.Float.Output("roc_auc", display_name="roc_auc", tooltip="Area under the ROC curve (1 = perfect separation)."),
                io.Float.Output("accuracy", display_name="accuracy", tooltip="Share of pairs judged right at the model's own threshold."),
                io.Float.Output("threshold", display_name="threshold", tooltip="The model's threshold (cosine similarity)."),
                io.Image.Output("histogram", display_name="histogram", tooltip="Similarities of same-person and different-person pairs."),
                io.String.Output("report", display_name="report", tooltip="The figures as text."),
            ],
        )

    @classmethod
    def _csv(cls, folder: str, pairs_file: str) -> str:
        path = confine(folder, _common.allowed_roots("input"), input="folder", kind="dir")
        name = safe_name(pairs_file, input="pairs_file")
        return confine(os.path.join(path, name), _common.allowed_roots("input"), input="pairs_file", kind="file")

    @classmethod
    def validate_inputs(cls, folder, pairs_file, model):
        bad = _common.validation_error(cls, {"folder": folder, "pairs_file": pairs_file, "model": model})
        if bad is not True:
            return bad
        try:
            cls._csv(folder, pairs_file)
        except ContinuityError as exc:
            return str(_common.node_error(cls, exc.input, exc.message))
        return True

    @classmethod
    @_common.reports_errors("folder")
    def execute(cls, folder, pairs_file, model) -> io.NodeOutput:
        csv_path = cls._csv(folder, pairs_file)
        root = os.path.dirname(csv_path)
        from ..continuity.imageio import load_image

        def load(n):
            p = confine(os.path.join(root, n), [root], input="pairs_file", kind="file")
            return load_image(p, max_side=limits.MAX_WORK_SIDE, max_pixels=limits.MAX_WORK_PIXELS,
                              input="pairs_file")[0]

        try:
            pairs = calibration.read_pairs(csv_path)
        except (KeyError, ValueError) as exc:
            raise ContinuityError(f"'{pairs_file}' needs the columns file_x, file_y, Decision ({exc})",
                                  input="pairs_file") from exc
        labels = [p[2] for p in pairs]
        if all(labels) or not any(labels):
            raise ContinuityError("the pairs need both Yes (same person) and No (different people) rows",
                                  input="pairs_file")
        emb = embedders.get_embedder(model, models_dir=_common.models_dir(), device=_glue.torch_device())
        res = calibration.evaluate_pairs(csv_path, emb, loader=load)
        hist = plots.pair_histogram(res["sims"], res["labels"], res["threshold"],
                                    title=f"{model}: ROC AUC {res['roc_auc']:.4f}, accuracy {res['accuracy']:.1%} "
                                          f"at {res['threshold']}")
        text = (f"{model}: {res['scored']}/{res['pairs']} pairs scored, ROC AUC {res['roc_auc']:.4f}, accuracy "
                f"{res['accuracy']:.4f} at threshold {res['threshold']}; mean similarity same {res['same_mean']:.3f}, "
                f"different {res['different_mean']:.3f}"
                + (f"; no face in {', '.join(res['no_face'])}" if res["no_face"] else ""))
        img = _common.np_to_image(hist)
        return io.NodeOutput(res["roc_auc"], res["accuracy"], res["threshold"], img, text, ui=ui.PreviewImage(img, cls=cls))


NODES = [FaceSimilarity, SelectBySimilarity, ConsistencyReport, IdentityModels, CalibrateIdentityModel,
         ClipSimilarity]
