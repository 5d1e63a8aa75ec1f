"""Writing a character's dataset versions (Grow Character Layer, the refine step) with the one
dataset-version writer (``continuity.dataset.versions.save_version``): what the previous dataset
carries over, the fresh sub-folder for the new images, the provenance as plain JSON."""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import ContinuityError
from ..imageio import list_images, read_caption


def jsonable(obj):
    """``obj`` as plain JSON values (tuples as lists, numpy numbers as numbers) for a manifest."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)
    return json.loads(json.dumps(obj, default=default))


def carry_over(root: str, previous: str | None, *, input: str = "character") -> tuple[list, int | None, str]:
    """The images of the ``previous`` dataset folder as items of a new version (nothing is changed
    there): a version written by the pack (under ``root``) is carried over hash-checked, record by
    record; any other folder (already confined by the caller) image by image with its caption.
    Returns (items, the previous version's number when it is a version of the same dataset, a label)."""
    from ..dataset import versions as vs
    if not previous:
        return [], None, ""
    real, base = os.path.realpath(previous), os.path.realpath(root)
    parent_dir, vname = os.path.split(real)
    if os.path.dirname(parent_dir) == base and vname[:1] == "v" and vname[1:].isdigit():
        ver = vs.load_version(root, os.path.basename(parent_dir), int(vname[1:]), input=input)
        return [vs.carried_over(ver, rec, input=input) for rec in ver.items], ver.number, f"{ver.name}/v{ver.number}"
    if not os.path.isdir(real):
        raise ContinuityError(f"the previous dataset version {os.path.basename(previous)} is missing", input=input)
    items = []
    for rel in list_images(real, recursive=True, roots=[real], input=input):
        path = os.path.join(real, rel)
        caption = read_caption(path, roots=[real])
        cap_path = os.path.splitext(path)[0] + ".txt"
        rel_u = rel.replace(os.sep, "/")
        items.append(vs.Item(filename=os.path.basename(rel_u), folder=os.path.dirname(rel_u), src_path=path,
                             caption=caption, source=rel_u,
                             src_caption_path=cap_path if caption and os.path.isfile(cap_path) else ""))
    return items, None, os.path.basename(real)


def free_folder(layer: str, items: list) -> str:
    """``layer``, or ``layer_2``, ... when the carried-over images have that sub-folder already."""
    taken = {(getattr(it, "keep_file", "") or "").split("/")[0] for it in items} | {getattr(it, "folder", "")
                                                                                   for it in items}
    folder, n = layer, 2
    while folder in taken:
        folder, n = f"{layer}_{n}", n + 1
    return folder
