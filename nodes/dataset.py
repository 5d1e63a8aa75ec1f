"""Dataset-stage nodes (V3 adapters over ``continuity.imageio`` and ``continuity.dataset``)."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..continuity import imageio
from ..continuity.errors import ContinuityError
from ..continuity.paths import confine
from . import _common
from ._types import CATEGORY


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
    def validate_inputs(cls, folder, caption_extension, **kwargs):
        try:
            cls._resolve(folder)
        except ContinuityError as exc:
            return str(_common.node_error(cls, "folder", exc.message))
        ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
        if os.sep in ext or "/" in ext or len(ext) > 16:
            return str(_common.node_error(cls, "caption_extension", f"'{caption_extension}' is not a file extension"))
        return True

    @classmethod
    def fingerprint_inputs(cls, folder, recursive, **kwargs):
        # Re-run when a file in the folder changes (added, removed, edited).
        try:
            path = cls._resolve(folder)
        except ContinuityError:
            return None
        stamp = []
        for name in imageio.list_images(path, recursive=recursive):
            st = os.stat(os.path.join(path, name))
            stamp.append((name, st.st_mtime_ns, st.st_size))
        return str(stamp)

    @classmethod
    @_common.reports_errors("folder")
    def execute(cls, folder, mode, recursive, start, limit, caption_extension) -> io.NodeOutput:
        path = cls._resolve(folder)
        items = imageio.load_folder(path, recursive=recursive, start=start, limit=limit,
                                    caption_extension=caption_extension)
        if not items:
            raise ContinuityError(f"no images ({', '.join(imageio.IMAGE_EXTENSIONS)}) in '{folder}'", input="folder")
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


NODES = [LoadImageFolder]
