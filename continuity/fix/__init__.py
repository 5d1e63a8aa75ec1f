"""The face fix: one image through it, in this package.

1. ``pipeline.fix_faces(images, detect=..., choose=..., parser=..., inpaint=..., settings=FixSettings(...),
   guard=None)``: for every image, the faces found once (``detect``), the ones to fix chosen
   (``choose``), one region mask per chosen face (``continuity.faces.masks.face_masks``: face,
   hair, ears, beard ..., grown in per cent of the face box; the person segmentation once per image),
2. ``geometry.crop_for_inpaint``: a square around each face's mask (context x its longest side, at
   least ``crop_min_size``), padded (never shifted) at the border, resized to ``target_size`` with
   Lanczos in float,
3. the injected ``inpaint(crops, masks, k)`` (in ComfyUI: two sampling passes, ``nodes/_glue.py``),
4. ``geometry.paste_back``: the change resized back with the exact inverse of the upscale, blended
   only inside the mask (feather in per cent of the crop side), everything outside bit-exact,
5. the guard (``pipeline.IdentityGuard`` + ``pipeline.keep_fix``): with a character, each fixed
   face is scored again with the identity measure and a fix that lowers it (or loses the face) is
   taken back,
6. a :class:`pipeline.FixResult`: the images, the masks of the fixes kept, and a
   :class:`pipeline.FaceReport` per chosen face.

Face Fix, Grow Character Layer and the training plan's refine step all run it; Crop For Inpaint
and Paste Back expose steps 2 and 4 as nodes.
"""
from . import geometry  # noqa: F401
from .pipeline import (  # noqa: F401
    FaceReport,
    FixResult,
    FixSettings,
    IdentityGuard,
    fix_faces,
    fix_image,
    keep_fix,
)
