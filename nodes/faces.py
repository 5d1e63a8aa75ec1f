"""Face-analysis nodes: load a face model, detect faces, Face Region Mask (V3 adapters over
``continuity.faces``)."""
from __future__ import annotations

import os

import numpy as np
import torch
from comfy_api.latest import io, ui

import folder_paths

from ..continuity import faces as cf
from ..continuity.errors import ContinuityError
from ..continuity.faces import masks as cmasks
from ..continuity.faces.draw import FaceBatch, draw_faces, overlay
from . import _common, _glue
from ._identity import CHARACTER_CHOICE, WHICH_TIP, CharacterChooser, character_input
from ._types import CATEGORY, FaceModel, Faces
from ._types import Cast as CastType

CAST_CHOICE = "cast"

# Pro-backend weights live in ComfyUI model folders (models/facexlib, models/insightface).
for _name in ("facexlib", "insightface"):
    if _name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name), is_default=True)

REGION_TIPS = {
    "skin": "Face skin (a beard inside the face outline counts as skin, as in CelebAMask-HQ).",
    "brows": "Eyebrows.", "eyes": "Eyes.", "nose": "Nose.", "mouth": "Mouth and lips.",
    "ears": "Ears.", "hair": "Hair (long hair is followed below the chin when its colour matches).",
    "beard": "Beard and moustache beyond the face outline (needs person segmentation or a parser).",
    "neck": "Neck skin under the jaw.", "glasses": "Glasses (BiSeNet parser only).", "hat": "Hat (BiSeNet parser only).",
}
REGION_DEFAULTS = {r: r in cf.DEFAULT_REGIONS for r in cf.REGIONS}


def _models_dir(backend: str) -> str | None:
    folder = {"retinaface": "facexlib", "insightface": "insightface"}.get(backend)
    if folder is None:
        return None
    return folder_paths.get_folder_paths(folder)[0]


def _rgb_list(images) -> list[np.ndarray]:
    return [cf.as_uint8_rgb(t.detach().cpu().float().numpy()) for t in _common.split_images(images)]


class FaceModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFaceModelLoader",
            display_name="Load Face Model (Continuity)",
            category=f"{CATEGORY}/faces",
            description=("Loads a face-analysis backend: a detector, a region parser and the name of the identity "
                         "embedder. 'mediapipe' and 'dlib' work offline out of the box; 'retinaface' (facexlib) and "
                         "'insightface' use weights in models/facexlib and models/insightface (downloaded on first "
                         "use when online). Models are loaded once per process."),
            inputs=[
                io.Combo.Input("backend", options=list(cf.BACKENDS), default="mediapipe",
                               tooltip="Face detector. mediapipe: fast, finds faces down to ~20 px, gives the 478-point "
                                       "mesh. dlib: HOG + 68 landmarks (frontal faces). retinaface / insightface: "
                                       "best detectors, need downloaded weights (non-commercial licences)."),
                io.Combo.Input("parser", options=list(cf.PARSERS), default="auto",
                               tooltip="Region parser. auto: mediapipe (mesh + person segmentation: face parts, hair, "
                                       "ears, beard, neck) when installed, else landmarks (face parts only). bisenet: "
                                       "facexlib's 19-class face parser (adds glasses and hat)."),
                io.String.Input("embedder", default="auto",
                                tooltip="Name of the identity embedder used by the scoring nodes ('auto' picks the "
                                        "best one available)."),
                io.Combo.Input("device", options=["cpu", "auto"], default="cpu",
                               tooltip="Where the pro networks run; auto uses ComfyUI's torch device."),
            ],
            outputs=[FaceModel.Output("face_model", display_name="face_model",
                                      tooltip="The loaded face-analysis backend.")],
        )

    @classmethod
    def validate_inputs(cls, backend, parser, device):
        return _common.validation_error(cls, {"backend": backend, "parser": parser, "device": device})

    @classmethod
    @_common.reports_errors("backend")
    def execute(cls, backend, parser, embedder, device) -> io.NodeOutput:
        if device == "auto":
            device = _glue.torch_device()
        analyzer = cf.load_analyzer(backend, device=device, models_dir=_models_dir(backend), parser=parser,
                                    parser_models_dir=_models_dir("retinaface") if parser == "bisenet" else None,
                                    embedder=embedder.strip() or "auto")
        return io.NodeOutput(analyzer)


class FaceDetect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityFaceDetect",
            display_name="Detect Faces (Continuity)",
            category=f"{CATEGORY}/faces",
            description=("Finds the faces in each image of a batch (largest first), keeping the image index, and "
                         "draws a preview with boxes, scores and landmarks. An image without a face gives an empty "
                         "list, not an error."),
            inputs=[
                FaceModel.Input("face_model", tooltip="From Load Face Model."),
                io.Image.Input("images", tooltip="A batch of images (RGB, RGBA or grey)."),
                io.Int.Input("min_face", default=24, min=0, max=4096,
                             tooltip="Ignore faces whose box (its longer side) is smaller than this many pixels, as "
                                     "Face Fix's min_face (tiny faces cannot be parsed reliably)."),
            ],
            outputs=[
                Faces.Output("faces", display_name="faces", tooltip="Faces per image, with the image index."),
                io.Image.Output("preview", display_name="preview", tooltip="Images with boxes and landmarks."),
                io.Int.Output("count", display_name="count", tooltip="Number of faces in the whole batch."),
            ],
        )

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, face_model, images, min_face) -> io.NodeOutput:
        batch = FaceBatch(backend=face_model.backend)
        previews = []
        for i, rgb in enumerate(_rgb_list(images)):
            faces = [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]
            batch.faces.append(faces)
            batch.sizes.append(rgb.shape[:2])
            previews.append(torch.from_numpy(draw_faces(rgb, faces).astype(np.float32) / 255.0))
        preview = torch.stack(previews)
        # boxes and landmarks shown on the node itself
        return io.NodeOutput(batch, preview, batch.count, ui=ui.PreviewImage(preview, cls=cls))


class FaceRegionMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        regions = [io.Boolean.Input(r, default=REGION_DEFAULTS[r], tooltip=REGION_TIPS[r]) for r in cf.REGIONS]
        return io.Schema(
            node_id="ContinuityFaceRegionMask",
            display_name="Face Region Mask (Continuity)",
            category=f"{CATEGORY}/faces",
            description=("A mask of the chosen face's regions (skin, brows, eyes, nose, mouth, ears, hair, beard, neck, "
                         "glasses, hat) for every image of a batch, aligned with the batch. Regions the parser cannot "
                         "give are listed in 'report'. With which = character and a character connected, the face is "
                         "the one most like the character (its similarity is in 'report'). An image without a face "
                         "(or without the character's) gets an empty mask (or an error, if asked)."),
            inputs=[
                FaceModel.Input("face_model", tooltip="From Load Face Model."),
                io.Image.Input("images", tooltip="A batch of images (RGB, RGBA or grey)."),
                io.Combo.Input("which", options=[*cmasks.WHICH, CHARACTER_CHOICE, CAST_CHOICE], default="largest",
                               tooltip="Which face: the largest, the most confident, the one at 'index' (0 = largest), "
                                       "all of them, or " + WHICH_TIP + " cast: every face given to a member of the "
                                       "connected cast (by identity, one face per member); the others are left out."),
                io.Int.Input("index", default=0, min=0, max=999, tooltip="Face index when 'which' is index (0 = largest)."),
                *regions,
                io.Float.Input("grow", default=5.0, min=-4096.0, max=4096.0, step=0.5,
                               tooltip="Grow (> 0) or shrink (< 0) the mask of each face, in grow_unit (default: per "
                                       "cent of the face box, as Face Fix's grow)."),
                io.Combo.Input("grow_unit", options=["px", "percent"], default="percent",
                               tooltip="percent: per cent of the face box size (as Face Fix); px: pixels."),
                io.Float.Input("feather_px", default=0.0, min=0.0, max=512.0, step=0.5,
                               tooltip="Soft edge width in pixels (Gaussian blur, sigma = feather_px / 2). (Face Fix's "
                                       "and Paste Back's feather is a blend width in per cent of the crop side.)"),
                io.Boolean.Input("fill_holes", default=True,
                                 tooltip="Fill enclosed holes (regions switched off stay out)."),
                io.Int.Input("min_face", default=24, min=0, max=4096,
                             tooltip="Ignore faces whose box (its longer side) is smaller than this many pixels, as "
                                     "Detect Faces and Face Fix."),
                io.Combo.Input("if_no_face", options=["empty mask", "error"], default="empty mask",
                               tooltip="What an image without a face (with which = character: without a face that "
                                       "reaches the character's threshold) gives: an all-zero mask, or an error."),
                Faces.Input("faces", optional=True,
                            tooltip="Faces already found by Detect Faces on these images (skips detection)."),
                character_input("A character profile (Load Character), used when which is 'character': the face "
                                "most similar to it is masked, with the face model's identity embedder."),
                CastType.Input("cast", optional=True,
                               tooltip="A cast (Make Cast / Load Cast), used when which is 'cast': the faces of its "
                                       "members are masked; 'info' says which face is whose and which are unknown."),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="One mask per image, same size and order."),
                io.Image.Output("preview", display_name="preview", tooltip="The images with the mask overlaid."),
                io.Int.Output("count", display_name="count", tooltip="Number of faces found in the whole batch."),
                io.String.Output("report", display_name="report",
                                 tooltip="Faces per image, the character's face and its similarity (which = "
                                         "character), and the regions the parser could not give."),
            ],
        )

    @classmethod
    def validate_inputs(cls, which, grow_unit, if_no_face):
        return _common.validation_error(cls, {"which": which, "grow_unit": grow_unit, "if_no_face": if_no_face})

    @classmethod
    @_common.reports_errors("images")
    def execute(cls, face_model, images, which, index, grow, grow_unit, feather_px, fill_holes, min_face, if_no_face,
                faces=None, character=None, cast=None, **switches) -> io.NodeOutput:
        regions = [r for r in cf.REGIONS if switches.get(r)]
        if not regions:
            raise ContinuityError("no region is switched on", input="skin")
        cast_pick = _cast_picker(face_model, cast, which)
        chooser = CharacterChooser(face_model, character, which)
        notes = [n for n in (chooser.note(), chooser.identity_line()) if n]
        rgbs = _rgb_list(images)
        if faces is not None and len(faces.faces) != len(rgbs):
            raise ContinuityError(f"the faces come from {len(faces.faces)} image(s) but {len(rgbs)} image(s) were given",
                                  input="faces")
        masks, previews, counts, total = [], [], [], 0
        unavailable: tuple[str, ...] = ()
        for i, rgb in enumerate(rgbs):
            if faces is not None:
                if tuple(faces.sizes[i]) != rgb.shape[:2]:
                    raise ContinuityError(f"image {i} is {rgb.shape[1]}x{rgb.shape[0]} but its faces were found on a "
                                          f"{faces.sizes[i][1]}x{faces.sizes[i][0]} image", input="faces")
                found = list(faces.faces[i])
            else:
                found = face_model.detect(rgb, image_index=i)
            found = [f for f in found if max(f.width, f.height) >= min_face]
            if not found and if_no_face == "error":
                raise ContinuityError(f"no face found in image {i} of the batch", input="images")
            chosen = None
            if cast_pick is not None:
                chosen = cast_pick(rgb, found, i, notes)
            elif chooser.active:
                match = chooser.match(rgb, found, i)
                notes.append(match.describe(i))
                if found and match.chosen is None and if_no_face == "error":
                    raise ContinuityError(match.describe(i), input="character")
                chosen = [match.chosen] if match.chosen is not None else []
            res = cmasks.region_masks(rgb, found, regions=regions, which=which if chosen is None else "all",
                                      index=index, grow=grow, grow_unit=grow_unit, feather=feather_px,
                                      fill_holes=fill_holes, parser=face_model.parser, image_index=i, chosen=chosen)
            unavailable = res.unavailable
            masks.append(torch.from_numpy(res.mask.astype(np.float32)))
            previews.append(torch.from_numpy(overlay(rgb, res.mask, faces=res.chosen).astype(np.float32) / 255.0))
            counts.append(len(found))
            total += len(found)
        info = "faces per image: " + ", ".join(str(c) for c in counts)
        if unavailable:
            info += (f"; the '{face_model.parser.name}' parser cannot give: {', '.join(unavailable)} "
                     "(use the bisenet parser for glasses and hat)")
        if notes:
            info += "\n" + "\n".join(notes)
        preview = _stack(previews)
        # the mask overlay on the node itself, with which faces were found
        shown = ui.PreviewImage(preview, cls=cls).as_dict()
        shown["continuity_text"] = [info]
        return io.NodeOutput(_stack(masks), preview, total, info, ui=shown)


def _cast_picker(face_model, cast, which: str):
    """choose(rgb, faces, i, notes) -> the faces of the cast's members, when which is 'cast'."""
    if which != CAST_CHOICE:
        return None
    if cast is None:
        raise ContinuityError("which is 'cast' but no cast is connected: connect Make Cast or Load Cast", input="cast")
    from ..continuity.cast import cast_faces
    det, emb, _ = _glue.face_backend(face_model)

    def choose(rgb, found, i, notes):
        ic = cast_faces(rgb, found, cast, emb, detector=det)
        notes.extend(ic.describe(i))
        return [f for _, f in ic.chosen()]
    return choose


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors)  # a batch has one size; list inputs run once per item


NODES = [FaceModelLoader, FaceDetect, FaceRegionMask]
