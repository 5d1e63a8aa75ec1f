"""Resource bounds: what one node call may take, checked before anything large is allocated.

A server is shared and its queue takes graphs from anyone who can reach it, so every node's memory
and time follow from its inputs' declared limits and from these caps; past them the node refuses
with a message naming the input, and the docs of each node state its bounds.
"""
from __future__ import annotations

from collections.abc import Sequence

from .errors import ContinuityError

#: largest side of an image a dataset or scoring node analyses (detection, masks, audit)
MAX_WORK_SIDE = 8192
#: most pixels of one such image (8192 x 6144: about 600 MB as float32 RGB)
MAX_WORK_PIXELS = 8192 * 6144
#: a composite sheet: same side, fewer pixels (cutting keeps a few full-size working copies)
MAX_SHEET_PIXELS = 40_000_000
#: most pixels one node call outputs as IMAGE in total (float32 RGB: 12 bytes a pixel, about 1.9 GB)
MAX_OUTPUT_PIXELS = 160_000_000
#: thumbnails on one contact sheet (192 px cells: at most 16 x 16, about 12 MP)
MAX_CONTACT_THUMBS = 256
#: largest text file a node reads (pairs lists and the like)
MAX_TEXT_FILE_BYTES = 1_000_000


def check_image(shape: Sequence[int], *, input: str, index: int | None = None, max_side: int = MAX_WORK_SIDE,
                max_pixels: int = MAX_WORK_PIXELS, what: str = "image") -> None:
    """Refuse an image (shape (H, W, ...)) larger than ``max_side`` or ``max_pixels``."""
    h, w = int(shape[0]), int(shape[1])
    which = f"{what} {index + 1}" if index is not None else what
    if h > max_side or w > max_side:
        raise ContinuityError(f"{which} is {w}x{h}; this node takes at most {max_side} px a side "
                              "(scale it down first)", input=input)
    if h * w > max_pixels:
        raise ContinuityError(f"{which} is {w}x{h} ({w * h} pixels); this node takes at most {max_pixels} pixels "
                              "(scale it down first)", input=input)


def check_images(images, *, input: str, max_side: int = MAX_WORK_SIDE, max_pixels: int = MAX_WORK_PIXELS,
                 what: str = "image") -> None:
    for i, img in enumerate(images):
        check_image(tuple(img.shape), input=input, index=i if len(images) > 1 else None, max_side=max_side,
                    max_pixels=max_pixels, what=what)


def check_total(pixels: int, *, input: str, budget: int = MAX_OUTPUT_PIXELS) -> None:
    """Refuse once the outputs made so far pass ``budget`` pixels (before the next one is made)."""
    if pixels > budget:
        raise ContinuityError(f"the outputs would be more than {budget} pixels in all; lower the size or cut "
                              "fewer sheets at once", input=input)


def check_output(count: int, height: int, width: int, *, input: str, budget: int = MAX_OUTPUT_PIXELS,
                 input_pixels: int = 0) -> None:
    """Refuse ``count`` outputs of ``height`` x ``width`` before they are made, past ``budget`` pixels
    or, for a large input batch, past twice the input's own pixels (whichever is larger)."""
    total = int(count) * int(height) * int(width)
    budget = max(budget, 2 * int(input_pixels))
    if total > budget:
        raise ContinuityError(f"{count} outputs of {width}x{height} would be {total} pixels; one run makes at most "
                              f"{budget} (lower the size or split the batch)", input=input)
