"""Dataset-stage nodes (V3 adapters over ``continuity.imageio`` and ``continuity.dataset``)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import torch
from comfy_api.latest import io

from ..continuity import imageio, limits, store
from ..continuity.arrays import as_float_rgb, as_uint8_rgb
from ..continuity.fix.geometry import resize
from ..continuity.dataset import versions as vs
from ..continuity.errors import ContinuityError
from ..continuity.paths import confine
from . import _common, _glue
from ._types import CATEGORY, Character, Dataset, FaceModel


def _caption_ext(ext: str) -> str:
    """A caption file extension such as '.txt' (the dot is added when missing)."""
    store.check_line(ext, input="caption_extension", max_len=16)
    ext = ext.strip()
    ext = ext if ext.startswith(".") else "." + ext
    if not re.fullmatch(r"\.[A-Za-z0-9_]{1,15}", ext):
        raise ContinuityError(f"{store.shown(ext)} is not a file extension such as .txt", input="caption_extension")
    return ext


class LoadImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityLoadImageFolder",
            display_name="Load Image Folder (Continuity)",
            category=f"{CATEGORY}/dataset",
            description=(
                "Loads every image of a folder under ComfyUI's input directory, with the file names "
                "and the captions stored beside them (name.txt). RGBA images give a mask the way "
                "LoadImage does (mask = 1 - alpha)."
            ),
            inputs=[
                io.String.Input("folder", default="continuity/dataset",
                                tooltip="A folder inside ComfyUI's input directory, e.g. 'my_character/v1'. "
                                        "Paths outside the input directory are refused."),
                io.Combo.Input("mode", options=["list", "batch"], default="list",
                               tooltip="list: one item per image, each at its own size (downstream nodes run "
                                       "once per image). batch: one IMAGE batch; all images must have the same "
                                       "size (use Square and Resize first)."),
                io.Boolean.Input("recursive", default=False, tooltip="Also load images from subfolders."),
                io.Int.Input("start", default=0, min=0, max=1_000_000,
                             tooltip="Skip this many images (in natural name order)."),
                io.Int.Input("limit", default=0, min=0, max=1_000_000,
                             tooltip="Load at most this many images; 0 loads all."),
                io.String.Input("caption_extension", default=".txt",
                                tooltip="Extension of the caption files beside the images."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", is_output_list=True,
                                tooltip="One IMAGE per file (list mode) or one batch (batch mode)."),
                io.Mask.Output("masks", display_name="masks", is_output_list=True, tooltip="1 - alpha, as LoadImage gives it."),
                io.String.Output("filenames", display_name="filenames", is_output_list=True, tooltip="File names relative to the folder."),
                io.String.Output("captions", display_name="captions", is_output_list=True, tooltip="Caption text of each image ('' if none)."),
                io.Int.Output("count", display_name="count", tooltip="Number of images loaded."),
            ],
        )

    @classmethod
    def _resolve(cls, folder: str) -> str:
        return confine(folder, _common.allowed_roots("input"), input="folder", kind="dir")

    @classmethod
    def validate_inputs(cls, folder, caption_extension, mode):
        bad = _common.validation_error(cls, {"mode": mode})
        if bad is not True:
            return bad
        try:
            store.check_line(folder, input="folder", max_len=500)
            cls._resolve(folder)
            _caption_ext(caption_extension)
        except ContinuityError as exc:
            return str(_common.node_error(cls, exc.input or "folder", exc.message))
        return True

    @classmethod
    def fingerprint_inputs(cls, folder, recursive, **kwargs):
        # Re-run when a file in the folder changes (added, removed, edited).
        try:
            path = cls._resolve(folder)
        except ContinuityError:
            return None
        stamp = []
        try:
            names = imageio.list_images(path, recursive=recursive, roots=_common.allowed_roots("input"))
        except ContinuityError:
            return None
        for name in names:
            st = os.stat(os.path.join(path, name))
            stamp.append((name, st.st_mtime_ns, st.st_size))
        return str(stamp)

    @classmethod
    @_common.reports_errors("folder")
    def execute(cls, folder, mode, recursive, start, limit, caption_extension) -> io.NodeOutput:
        store.check_line(folder, input="folder", max_len=500)
        path = cls._resolve(folder)
        items = imageio.load_folder(path, recursive=recursive, start=start, limit=limit,
                                    caption_extension=_caption_ext(caption_extension),
                                    roots=_common.allowed_roots("input"))
        if not items:
            raise ContinuityError(f"no images ({', '.join(imageio.IMAGE_EXTENSIONS)}) in {store.shown(folder)}",
                                  input="folder")
        names = [it.name for it in items]
        captions = [it.caption for it in items]
        if mode == "batch":
            sizes = {it.rgb.shape[:2] for it in items}
            if len(sizes) > 1:
                first = items[0]
                odd = next(it for it in items if it.rgb.shape[:2] != first.rgb.shape[:2])
                raise ContinuityError(
                    f"batch mode needs images of one size, but '{first.name}' is {first.rgb.shape[1]}x{first.rgb.shape[0]} "
                    f"and '{odd.name}' is {odd.rgb.shape[1]}x{odd.rgb.shape[0]}; use list mode or Square and Resize",
                    input="mode")
            images = [torch.cat([_common.np_to_image(it.rgb) for it in items])]
            masks = [torch.cat([_common.np_to_mask(it.mask) for it in items])]
        else:
            images = [_common.np_to_image(it.rgb) for it in items]
            masks = [_common.np_to_mask(it.mask) for it in items]
        return io.NodeOutput(images, masks, names, captions, len(items))



# ----------------------------------------------------------------------------- helpers

DATASETS_SUBDIR = os.path.join("continuity", "datasets")


def _datasets_root() -> str:
    return _common.datasets_root()


def _detector(face_model=None, *, need: bool = True):
    """The face detector of a connected FACE_MODEL, else the built-in one (mediapipe, else dlib)."""
    from ..continuity import faces
    if face_model is not None:
        return getattr(face_model, "detector", face_model)
    name = "mediapipe" if faces.mediapipe_available() else "dlib"
    return faces.get_detector(name)


def _person_mask_fn():
    from ..continuity import faces
    return faces.person_mask if faces.mediapipe_available() else None


def _character(character):
    """The CHARACTER of an optional ``character`` input (a list of one on is_input_list nodes), or None."""
    from ..continuity.character import as_character
    return as_character(_glue.first(character))


def _reference_embeddings(char, embedder, detector) -> np.ndarray:
    """The character's reference embeddings for ``embedder`` (one per portrait, the identity the face
    nodes match against; cached per revision and by content)."""
    from ..continuity.character.identity import character_identity
    return character_identity(char, embedder, detector=detector).references


def _dataset_value(version) -> dict:
    return version.as_dict()


def _shown_path(path: str) -> str:
    """A path as shown to clients: relative to ComfyUI's output folder, never the server's absolute path."""
    try:
        rel = os.path.relpath(path, os.path.realpath(_common.output_dir()))
    except ValueError:
        return os.path.basename(path)
    return "output/" + rel.replace(os.sep, "/") if not rel.startswith("..") else os.path.basename(path)


# ----------------------------------------------------------------------------- sheet cutting

class CutCompositeSheet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityCutCompositeSheet",
            display_name="Cut Composite Sheet (Continuity)",
            category=f"{CATEGORY}/dataset",
            description=(
                "Splits a composite sheet (several portraits of one character on one image) into single "
                "images. Panels are found from gutters (flat bands) and seams (sharp full-length borders), "
                "uneven layouts included; parts that still hold several faces are cut between the faces. "
                "Each panel is then made square around its face and resized with Lanczos."),
            inputs=[
                io.Image.Input("sheet", tooltip="The composite sheet(s); every image of a batch is cut."),
                io.Combo.Input("method", options=["auto", "gutters", "faces"], default="auto",
                               tooltip="auto: gutters and seams, then faces split what still holds several. "
                                       "gutters: borders only (no face detection). faces: cut between detected faces only."),
                io.Boolean.Input("square", default=True,
                                 tooltip="Make each panel the largest square inside it, placed on its face."),
                io.Int.Input("size", default=1024, min=0, max=8192, step=8,
                             tooltip="Side of the output squares (Lanczos); 0 keeps each panel's own size "
                                     "(then the outputs are a list of different sizes)."),
                io.Boolean.Input("drop_faceless", default=False,
                                 tooltip="Drop panels in which no face was found (needs face detection)."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="Face detector to use; without one, the built-in (MediaPipe, else dlib)."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", is_output_list=True,
                                tooltip="One image per panel, in reading order."),
                io.String.Output("panels", display_name="panels",
                                 tooltip="JSON: each panel's box in the sheet, how it was found and its face count."),
                io.Int.Output("count", display_name="count", tooltip="Number of panels."),
            ],
        )

    @classmethod
    def validate_inputs(cls, method):
        return _common.validation_error(cls, {"method": method})

    @classmethod
    @_common.reports_errors("sheet")
    def execute(cls, sheet, method, square, size, drop_faceless, face_model=None) -> io.NodeOutput:
        from ..continuity.dataset import sheet as sheetlib
        from ..continuity.dataset import square as sq
        out_images, records = [], []
        sheets = _common.split_images(sheet)
        limits.check_images(sheets, input="sheet", max_pixels=limits.MAX_SHEET_PIXELS, what="sheet")
        made = 0
        for si, img in enumerate(sheets):
            _glue.throw_if_interrupted()
            u8 = as_uint8_rgb(img)
            rgb = as_float_rgb(img)
            faces = []
            if method != "gutters" or drop_faceless:
                faces = _detector(face_model).detect(u8)
            panels = sheetlib.find_panels(u8, faces, method="faces" if method == "faces" else
                                          ("gutters" if method == "gutters" else "auto"))
            for p in panels:
                if drop_faceless and not p.faces:
                    continue
                box = p.box
                if square:
                    face_box = p.faces[0].box if p.faces else None
                    box = sq.square_panel_box(p.box, face_box)
                x0, y0, x1, y1 = box
                crop = rgb[y0:y1, x0:x1]
                made += (size * size) if size > 0 else crop.shape[0] * crop.shape[1]
                limits.check_total(made, input="size")
                if size > 0 and (crop.shape[0] != size or crop.shape[1] != size):
                    s = size / max(crop.shape[:2])
                    th, tw = (size, size) if square else (max(1, round(crop.shape[0] * s)),
                                                           max(1, round(crop.shape[1] * s)))
                    crop = resize(crop, th, tw)
                out_images.append(_common.np_to_image(crop))
                records.append({"sheet": si, "panel": [int(v) for v in p.box], "crop": [int(v) for v in box],
                                "how": p.how, "faces": len(p.faces)})
        if not out_images:
            raise ContinuityError("no panel found (with drop_faceless, no panel had a face)", input="sheet")
        return io.NodeOutput(out_images, json.dumps(records), len(out_images))


# ----------------------------------------------------------------------------- square and resize

class SquareAndResize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuitySquareAndResize",
            display_name="Square and Resize (Continuity)",
            category=f"{CATEGORY}/dataset",
            description=(
                "A content-aware square crop around the character (face and person mask), resized to the "
                "target side with Lanczos. Warns when the source would be upscaled beyond a chosen factor. "
                "Images without a face are cropped at the centre."),
            inputs=[
                io.Image.Input("images", tooltip="Images of any sizes (a batch or a list)."),
                io.Int.Input("size", default=1024, min=64, max=8192, step=8, tooltip="Side of the output square."),
                io.Combo.Input("mode", options=["crop", "pad"], default="crop",
                               tooltip="crop: the largest square inside the image, placed on the character. "
                                       "pad: the whole image inside a square, padded with black."),
                io.Float.Input("max_upscale", default=1.5, min=1.0, max=16.0, step=0.05,
                               tooltip="Warn when the square is enlarged more than this factor."),
                io.Boolean.Input("use_person_mask", default=True,
                                 tooltip="Use the person mask (MediaPipe selfie segmentation) to keep the whole person in."),
                io.Mask.Input("masks", optional=True, tooltip="Masks to cut the same way (e.g. inpaint masks)."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="Face detector to use; without one, the built-in (MediaPipe, else dlib)."),
            ],
            outputs=[
                io.Image.Output("squares", display_name="images", tooltip="The squares, one batch per input."),
                io.Mask.Output("square_masks", display_name="masks", tooltip="The masks cut the same way (zeros without masks)."),
                io.String.Output("warnings", display_name="warnings", tooltip="Upscale warnings, one line per image ('' if none)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, mode):
        return _common.validation_error(cls, {"mode": mode})

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, images, size, mode, max_upscale, use_person_mask, masks=None, face_model=None) -> io.NodeOutput:
        from ..continuity.dataset import square as sq
        imgs = _common.split_images(images)
        limits.check_images(imgs, input="images")
        limits.check_output(len(imgs), size, size, input="size",
                            input_pixels=sum(int(t.shape[0]) * int(t.shape[1]) for t in imgs))
        mlist = _common.split_masks(masks)
        if mlist and len(mlist) not in (1, len(imgs)):
            raise ContinuityError(f"{len(mlist)} masks for {len(imgs)} images", input="masks")
        det = _detector(face_model)
        pm = _person_mask_fn() if use_person_mask else None
        outs, out_masks, warnings = [], [], []
        for i, img in enumerate(imgs):
            _glue.throw_if_interrupted()
            u8 = as_uint8_rgb(img)
            h, w = u8.shape[:2]
            faces = det.detect(u8) if mode == "crop" else []
            person = pm(u8) if (pm is not None and mode == "crop") else None
            plan = sq.plan_square(w, h, face_box=faces[0].box if faces else None, person_mask=person,
                                  target=size, max_upscale=max_upscale, mode=mode)
            m = None
            if mlist:
                m = mlist[i if len(mlist) > 1 else 0].detach().cpu().float().numpy()
                if m.shape != (h, w):
                    raise ContinuityError(f"mask {m.shape[1]}x{m.shape[0]} does not match image {w}x{h}", input="masks")
            rgb, mo = sq.apply_square(img, plan, mask=m)
            outs.append(_common.np_to_image(rgb))
            out_masks.append(_common.np_to_mask(mo if mo is not None else np.zeros((size, size), np.float32)))
            if plan.warning:
                warnings.append(f"image {i + 1}: {plan.warning}")
        return io.NodeOutput(torch.cat(outs), torch.cat(out_masks), "\n".join(warnings))


# ----------------------------------------------------------------------------- audit

class DatasetAudit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..continuity.faces import embedders
        return io.Schema(
            node_id="ContinuityDatasetAudit",
            display_name="Dataset Audit (Continuity)",
            category=f"{CATEGORY}/dataset",
            is_output_node=True,
            is_input_list=True,
            description=(
                "Checks a dataset against the guidelines, per image and for the set: square, resolution, "
                "count; framing (close-up, close-up portrait, portrait, 3/4 shot, full body; DreamShot "
                "scales close/medium/long) from the face size and person mask; head pose (frontal, left, "
                "right, up, down) from landmarks; near-duplicates; identity outliers against the set's "
                "mean embedding. Gives a table, a coverage grid of what is missing and a contact sheet."),
            inputs=[
                io.Image.Input("images", tooltip="The dataset images (a list, e.g. from Load Image Folder, or a batch)."),
                io.String.Input("filenames", optional=True, force_input=True,
                                tooltip="Names for the table (Load Image Folder's filenames)."),
                io.Combo.Input("identity_model", options=["none", *embedders.NAMES], default="dlib",
                               tooltip="Identity embedding model for outliers (dlib is built in); none skips the check."),
                io.Int.Input("min_side", default=1024, min=64, max=8192, tooltip="Guideline: smallest side in px."),
                io.Int.Input("min_count", default=20, min=1, max=100000, tooltip="Guideline: least number of images."),
                io.Float.Input("yaw_threshold", default=20.0, min=1.0, max=90.0,
                               tooltip="Degrees of head turn beyond which an image counts as left/right."),
                io.Float.Input("pitch_threshold", default=25.0, min=1.0, max=90.0,
                               tooltip="Degrees of head tilt beyond which an image counts as up/down."),
                io.Boolean.Input("use_person_mask", default=True,
                                 tooltip="Use the person mask to tell full-body shots (person ends inside the frame)."),
                FaceModel.Input("face_model", optional=True,
                                tooltip="Face detector to use; without one, the built-in (MediaPipe, else dlib)."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, identity outliers are "
                                        "judged against the character (its stored mean embedding for the model, else "
                                        "its reference portraits) at its threshold, instead of against the set's mean."),
            ],
            outputs=[
                io.String.Output("table", display_name="table", tooltip="The audit table (markdown) with the set summary and what is missing."),
                io.String.Output("report_json", display_name="report_json", tooltip="Everything as JSON."),
                io.Image.Output("coverage", display_name="coverage", tooltip="Grid framing x head pose: counts, red where missing."),
                io.Image.Output("contact_sheet", display_name="contact_sheet", tooltip="Thumbnails with framing/pose labels; red frame = issues."),
                io.String.Output("framing", display_name="framing", is_output_list=True,
                                 tooltip="Framing class of each image (for captions)."),
                io.String.Output("pose", display_name="pose", is_output_list=True, tooltip="Head pose class of each image."),
            ],
        )

    @classmethod
    def validate_inputs(cls, identity_model):
        return _common.validation_error(cls, {"identity_model": identity_model})

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, images, identity_model, min_side, min_count, yaw_threshold, pitch_threshold,
                use_person_mask, filenames=None, face_model=None, character=None) -> io.NodeOutput:
        import comfy.utils
        from ..continuity.dataset import audit as au
        from ..continuity.faces import embedders
        split = _common.split_images(images)
        limits.check_images(split, input="images")
        imgs = [as_uint8_rgb(t) for t in split]
        del split
        if not imgs:
            raise ContinuityError("no images", input="images")
        names = list(filenames or [])
        if names and len(names) != len(imgs):
            raise ContinuityError(f"{len(names)} filenames for {len(imgs)} images", input="filenames")
        fm = _glue.first(face_model)
        model = _glue.first(identity_model, "dlib")
        char = _character(character)
        emb = None
        if model != "none":
            emb = embedders.get_embedder(model, models_dir=_common.models_dir())
        reference, threshold = None, None
        if char is not None and emb is not None:   # outliers against the character, at its threshold
            reference = _reference_embeddings(char, emb, _detector(fm))
            threshold = char.threshold(emb.name, getattr(emb, "threshold", None))
        opt = au.AuditOptions(min_side=_glue.first(min_side), min_count=_glue.first(min_count),
                              yaw_threshold=_glue.first(yaw_threshold), pitch_threshold=_glue.first(pitch_threshold),
                              use_person_mask=bool(_glue.first(use_person_mask)))
        pbar = comfy.utils.ProgressBar(len(imgs))

        def progress(_i):
            pbar.update(1)

        _glue.throw_if_interrupted()
        res = au.audit(imgs, names or None, detector=_detector(fm), embedder=emb,
                       person_mask_fn=_person_mask_fn(), options=opt, progress=progress,
                       reference=reference, threshold=threshold)
        table = au.table_text(res)
        cov = _common.np_to_image(au.coverage_image(res))
        sheet = _common.np_to_image(au.contact_sheet(imgs, res))
        return io.NodeOutput(table, json.dumps(res.as_dict()), cov, sheet,
                             [r.framing for r in res.images], [r.pose for r in res.images],
                             ui={"text": [table]})


# ----------------------------------------------------------------------------- captions

class BuildCaption(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityBuildCaption",
            display_name="Build Caption (Continuity)",
            category=f"{CATEGORY}/dataset",
            description=(
                "Modular captions: trigger word, class, appearance, framing, background, extra - each part "
                "separable. Also gives the matching regularization caption, where the character is replaced "
                "by its class phrase ('photo of a man'). An existing caption (e.g. read by Load Image Folder) "
                "is split into its parts and the non-empty widgets replace those parts."),
            inputs=[
                io.String.Input("trigger", default="ohwx", tooltip="The trigger word of the character."),
                io.String.Input("class_word", default="man", tooltip="The class: man, woman, person, dog..."),
                io.String.Input("appearance", default="", multiline=True,
                                tooltip="Appearance parts, comma-separated (hair, eyes, clothes)."),
                io.String.Input("framing", default="", tooltip="Framing part (e.g. close-up); connect Dataset Audit's framing list."),
                io.String.Input("background", default="", tooltip="Background/light part (studio background, outdoors)."),
                io.String.Input("extra", default="", tooltip="Anything else, comma-separated."),
                io.String.Input("prefix", default="photo of", tooltip="Words before the subject."),
                io.Boolean.Input("include_trigger", default=True, tooltip="Put the trigger word in the caption."),
                io.Boolean.Input("include_appearance", default=True, tooltip="Put the appearance parts in the caption."),
                io.Boolean.Input("include_framing", default=True, tooltip="Put the framing in the caption."),
                io.Boolean.Input("include_background", default=True, tooltip="Put the background in the caption."),
                io.String.Input("caption", optional=True, force_input=True,
                                tooltip="An existing caption to start from (split into its parts)."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, its trigger word and "
                                        "class phrase replace trigger and class_word (an empty one in the profile "
                                        "keeps the widget's)."),
            ],
            outputs=[
                io.String.Output("caption_out", display_name="caption", tooltip="The caption."),
                io.String.Output("regularization_caption", display_name="regularization_caption",
                                 tooltip="The class-image caption: the character replaced by its class phrase."),
            ],
        )

    @classmethod
    @_common.reports_errors("caption")
    def execute(cls, trigger, class_word, appearance, framing, background, extra, prefix, include_trigger,
                include_appearance, include_framing, include_background, caption=None,
                character=None) -> io.NodeOutput:
        from ..continuity.dataset import captions as cp
        char = _character(character)
        if char is not None:   # the character's trigger word / class phrase replace the widgets
            trigger = char.trigger_word.strip() or trigger
            class_word = char.class_phrase.strip() or class_word
        if framing == "unknown":
            framing = ""
        if caption:
            cap = cp.parse(caption, trigger=trigger, class_word=class_word, prefix=prefix)
            cap = cap.with_parts(appearance=cp.split_list(appearance), framing=framing, background=background,
                                 extra=cp.split_list(extra))
        else:
            cap = cp.Caption(trigger=trigger, class_word=class_word, appearance=cp.split_list(appearance),
                             framing=framing, background=background, extra=cp.split_list(extra), prefix=prefix)
        include = {"class", "extra"}
        if include_trigger:
            include.add("trigger")
        if include_appearance:
            include.add("appearance")
        if include_framing:
            include.add("framing")
        if include_background:
            include.add("background")
        reg = cp.Caption(class_word=cap.class_word, framing=cap.framing if include_framing else "",
                         background=cap.background if include_background else "", extra=cap.extra,
                         prefix=cap.prefix).regularization()
        return io.NodeOutput(cap.compose(include), reg)


# ----------------------------------------------------------------------------- versions

def _name_ok(name: str) -> str:
    from ..continuity.paths import safe_name
    return safe_name(name, input="name")


def _scores_for(scores, n: int) -> list[dict]:
    """Per-image score dicts from a SCORES value or JSON text (a list per image, or a dict)."""
    if scores is None:
        return [{} for _ in range(n)]
    val = scores
    if isinstance(val, str):
        val = store.load_json(val, what="scores", input="scores") if val.strip() else None
    if hasattr(val, "per_image"):
        val = val.per_image()
    if isinstance(val, list) and len(val) == n:
        return [v if isinstance(v, dict) else {"score": v} for v in val]
    if isinstance(val, dict):
        return [dict(val) for _ in range(n)]
    return [{} for _ in range(n)]


class SaveDatasetVersion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuitySaveDatasetVersion",
            display_name="Save Dataset Version (Continuity)",
            category=f"{CATEGORY}/dataset",
            is_output_node=True,
            is_input_list=True,
            description=(
                "Writes images, captions (name.txt beside each image) and masks (masks/) into a new version "
                "folder output/continuity/datasets/<name>/vN with a manifest.json (source of each image, "
                "scores, hashes). The folder is built aside and moved into place whole; an existing version "
                "is never changed."),
            inputs=[
                io.Image.Input("images", tooltip="The images (a list or batches)."),
                io.String.Input("name", default="my_character", tooltip="Dataset name (a folder name, no slashes)."),
                io.String.Input("note", default="", multiline=True, tooltip="A note stored in the manifest."),
                io.String.Input("captions", optional=True, force_input=True, tooltip="One caption per image."),
                io.String.Input("filenames", optional=True, force_input=True,
                                tooltip="File names (Load Image Folder's filenames); stored as each image's source."),
                io.Mask.Input("masks", optional=True, tooltip="One mask per image (e.g. inpaint masks), saved under masks/."),
                io.String.Input("scores", optional=True, force_input=True,
                                tooltip="Scores as JSON text: a list with one object per image, or one object for all."),
                Character.Input("character", optional=True,
                                tooltip="A character profile (Load Character). When connected, its name replaces name "
                                        "(the versions go to output/continuity/datasets/<character>/vN) and the "
                                        "manifest notes the character and its revision. Record the version in the "
                                        "profile with Record Character Result."),
            ],
            outputs=[
                Dataset.Output("dataset", display_name="dataset", tooltip="The version written (name, number, path, manifest)."),
                io.String.Output("path", display_name="path", tooltip="The version folder."),
                io.Int.Output("version", display_name="version", tooltip="The version number."),
            ],
        )

    @classmethod
    def validate_inputs(cls, name, note):
        try:
            _name_ok(_glue.first(name, ""))
            store.check_text(_glue.first(note, ""), input="note", max_len=vs.MAX_NOTE)
        except ContinuityError as exc:
            return str(_common.node_error(cls, exc.input, exc.message))
        return True

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, images, name, note, captions=None, filenames=None, masks=None, scores=None,
                character=None) -> io.NodeOutput:
        char = _character(character)
        name = _name_ok(char.name if char is not None else _glue.first(name, ""))
        note = store.check_text(_glue.first(note, ""), input="note", max_len=vs.MAX_NOTE)
        if char is not None:
            note = (f"character {char.name} (revision {char.revision})" + (f"; {note}" if note else ""))
        imgs = _common.split_images(images)
        n = len(imgs)
        if n > vs.MAX_ITEMS:
            raise ContinuityError(f"{n} images; a version holds at most {vs.MAX_ITEMS}", input="images")
        caps = [store.check_text(c, input="captions", max_len=vs.MAX_CAPTION) for c in (captions or [])]
        if caps and len(caps) == 1 and n > 1:
            caps = caps * n
        if caps and len(caps) != n:
            raise ContinuityError(f"{len(caps)} captions for {n} images", input="captions")
        names = [store.check_line(f, input="filenames", max_len=500) for f in (filenames or [])]
        if names and len(names) != n:
            raise ContinuityError(f"{len(names)} filenames for {n} images", input="filenames")
        mlist = _common.split_masks(masks)
        if mlist and len(mlist) != n:
            raise ContinuityError(f"{len(mlist)} masks for {n} images", input="masks")
        sc = _scores_for(_glue.first(scores), n)
        items = []
        for i, img in enumerate(imgs):
            m = mlist[i].detach().cpu().float().numpy() if mlist else None
            if m is not None and m.shape != tuple(img.shape[:2]):
                raise ContinuityError(f"mask {i + 1} is {m.shape[1]}x{m.shape[0]}, image is "
                                      f"{img.shape[1]}x{img.shape[0]}", input="masks")
            fname = names[i] if names else f"img{i + 1:04d}"
            items.append(vs.Item(filename=fname, rgb=as_uint8_rgb(img), caption=caps[i] if caps else "", mask=m,
                                 source=names[i] if names else "", scores=sc[i]))
        provenance = {"step": "save"}
        if char is not None:
            provenance.update(character=char.name, revision=char.revision)
        ver = vs.save_version(_datasets_root(), name, items, note=note, provenance=provenance)
        summary = f"{name} v{ver.number}: {n} images -> {_shown_path(ver.path)}"
        return io.NodeOutput(_dataset_value(ver), ver.path, ver.number, ui={"text": [summary]})


class LoadDatasetVersion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityLoadDatasetVersion",
            display_name="Load Dataset Version (Continuity)",
            category=f"{CATEGORY}/dataset",
            description="Loads a version saved by Save Dataset Version (0 = the latest), with captions and masks.",
            inputs=[
                io.String.Input("name", default="my_character", tooltip="Dataset name."),
                io.Int.Input("version", default=0, min=0, max=100000, tooltip="Version number; 0 = the latest."),
            ],
            outputs=[
                Dataset.Output("dataset", display_name="dataset", tooltip="The version (for Merge Fixed Images)."),
                io.Image.Output("images", display_name="images", is_output_list=True, tooltip="One image per file."),
                io.Mask.Output("masks", display_name="masks", is_output_list=True, tooltip="Stored masks (zeros where none)."),
                io.String.Output("filenames", display_name="filenames", is_output_list=True, tooltip="File names in the version."),
                io.String.Output("captions", display_name="captions", is_output_list=True, tooltip="Captions."),
                io.Int.Output("count", display_name="count", tooltip="Number of images."),
            ],
        )

    @classmethod
    def validate_inputs(cls, name):
        try:
            _name_ok(name)
        except ContinuityError as exc:
            return str(_common.node_error(cls, "name", exc.message))
        return True

    @classmethod
    def fingerprint_inputs(cls, name, version):
        # the version read, and its manifest's identity: a replaced manifest is read (and judged) again
        try:
            folder = vs.dataset_dir(_datasets_root(), _name_ok(name))
            n = version or (vs.versions_of(_datasets_root(), name) or [0])[-1]
            st = os.stat(os.path.join(folder, f"v{n}", vs.MANIFEST))
            return f"v{n}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        except (ContinuityError, OSError):
            return None

    @classmethod
    @_common.reports_errors("name")
    def execute(cls, name, version) -> io.NodeOutput:
        ver = vs.load_version(_datasets_root(), _name_ok(name), version, input="version")
        images, masks, names, caps = [], [], [], []
        for it in vs.read_items(ver, input="version"):
            images.append(_common.np_to_image(it.rgb))
            masks.append(_common.np_to_mask(it.mask if it.mask is not None else np.zeros(it.rgb.shape[:2], np.float32)))
            names.append(it.file)
            caps.append(it.caption)
        return io.NodeOutput(_dataset_value(ver), images, masks, names, caps, len(names))


class MergeFixedImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityMergeFixedImages",
            display_name="Merge Fixed Images (Continuity)",
            category=f"{CATEGORY}/dataset",
            is_output_node=True,
            is_input_list=True,
            description=(
                "The feedback loop: makes the next version of a dataset from a version plus fixed images. A "
                "fixed image replaces the file named in 'filenames' (the manifest records which version and "
                "file it was fixed from); a name not in the version adds the image. The base version is "
                "never changed."),
            inputs=[
                Dataset.Input("dataset", tooltip="The base version (Save or Load Dataset Version)."),
                io.Image.Input("fixed_images", tooltip="The fixed images."),
                io.String.Input("filenames", force_input=True,
                                tooltip="For each fixed image, the file of the base version it replaces."),
                io.String.Input("note", default="", multiline=True, tooltip="A note stored in the manifest."),
                io.String.Input("captions", optional=True, force_input=True,
                                tooltip="New captions for the fixed images (else the old caption is kept)."),
                io.Mask.Input("masks", optional=True, tooltip="Masks of the fixed images (e.g. the inpainted area)."),
                io.String.Input("scores", optional=True, force_input=True,
                                tooltip="Scores of the fixed images as JSON text (a list, one object per image)."),
            ],
            outputs=[
                Dataset.Output("new_dataset", display_name="dataset", tooltip="The new version."),
                io.String.Output("path", display_name="path", tooltip="The new version folder."),
                io.Int.Output("version", display_name="version", tooltip="The new version number."),
            ],
        )

    @classmethod
    @_common.reports_errors("fixed_images")
    def execute(cls, dataset, fixed_images, filenames, note, captions=None, masks=None, scores=None) -> io.NodeOutput:
        base = vs.from_value(_datasets_root(), _glue.first(dataset), input="dataset")
        imgs = _common.split_images(fixed_images)
        n = len(imgs)
        names = [store.check_line(f, input="filenames", max_len=500) for f in (filenames or [])]
        if len(names) != n:
            raise ContinuityError(f"{len(names)} filenames for {n} fixed images", input="filenames")
        caps = [store.check_text(c, input="captions", max_len=vs.MAX_CAPTION) for c in (captions or [])]
        if caps and len(caps) != n:
            raise ContinuityError(f"{len(caps)} captions for {n} fixed images", input="captions")
        mlist = _common.split_masks(masks)
        if mlist and len(mlist) != n:
            raise ContinuityError(f"{len(mlist)} masks for {n} fixed images", input="masks")
        sc = _scores_for(_glue.first(scores), n)
        fixes = [vs.Fix(target=names[i], rgb=as_uint8_rgb(img), caption=caps[i] if caps else "",
                        mask=mlist[i].detach().cpu().float().numpy() if mlist else None, scores=sc[i])
                 for i, img in enumerate(imgs)]
        ver = vs.merge_fixed(_datasets_root(), base, fixes,
                             note=store.check_text(_glue.first(note, ""), input="note", max_len=vs.MAX_NOTE))
        prov = ver.provenance
        summary = f"{ver.name} v{ver.number} from v{base.number}: {len(prov.get('replaced', []))} replaced, " \
                  f"{prov.get('added', 0)} added -> {_shown_path(ver.path)}"
        return io.NodeOutput(_dataset_value(ver), ver.path, ver.number, ui={"text": [summary]})


NODES = [LoadImageFolder, CutCompositeSheet, SquareAndResize, DatasetAudit, BuildCaption,
         SaveDatasetVersion, LoadDatasetVersion, MergeFixedImages]
