"""Versioned datasets: ``<root>/<name>/v1, v2, ...``, each with images, captions, masks and a manifest.

A version is built in a temporary folder and renamed into place when complete
(:func:`continuity.fsutil.new_version_folder`), so it appears whole or not at all, and an existing
version is never written to again. ``manifest.json`` records for each image its file, caption,
mask, where it came from (``source``), what it was inpainted/fixed from (``fixed_from``), its
scores and a content hash.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import ContinuityError
from ..fsutil import existing_versions, new_version_folder
from ..imageio import load_image
from ..paths import safe_name

MANIFEST = "manifest.json"
FORMAT = "continuity-dataset/1"


@dataclass
class Item:
    """One image to store. ``rgb`` float [0,1] or uint8 (H, W, 3)."""
    filename: str
    rgb: np.ndarray | None = None
    caption: str = ""
    mask: np.ndarray | None = None
    source: str = ""
    fixed_from: str = ""
    scores: dict = field(default_factory=dict)
    src_path: str = ""           # copy this file instead of encoding rgb (merge)
    src_mask_path: str = ""


@dataclass
class Version:
    name: str
    number: int
    path: str
    manifest: dict

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.number, "path": self.path, "manifest": self.manifest}

    @property
    def items(self) -> list[dict]:
        return self.manifest.get("items", [])


def _u8(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def _stem(filename: str) -> str:
    base = os.path.basename(filename.replace("\\", "/"))
    stem = os.path.splitext(base)[0] or "image"
    cleaned = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in stem).strip("._") or "image"
    return cleaned[:80]


def dataset_dir(root: str, name: str) -> str:
    return os.path.join(root, safe_name(name, input="name"))


def _write_items(stage: str, items: list[Item], caption_extension: str) -> list[dict]:
    os.makedirs(os.path.join(stage, "masks"), exist_ok=True)
    used: set[str] = set()
    records = []
    for it in items:
        stem = _stem(it.filename)
        cand, n = stem, 1
        while cand.lower() in used:
            n += 1
            cand = f"{stem}_{n}"
        used.add(cand.lower())
        fname = cand + ".png"
        dst = os.path.join(stage, fname)
        if it.src_path:
            if it.src_path.lower().endswith(".png"):
                shutil.copyfile(it.src_path, dst)
            else:
                rgb, _ = load_image(it.src_path)
                with open(dst, "wb") as fh:
                    fh.write(_png_bytes(_u8(rgb)))
            with open(dst, "rb") as fh:
                data = fh.read()
            with Image.open(dst) as im:
                width, height = im.size
        else:
            arr = _u8(it.rgb)
            data = _png_bytes(arr)
            with open(dst, "wb") as fh:
                fh.write(data)
            height, width = arr.shape[:2]
        rec = {"file": fname, "width": int(width), "height": int(height),
               "sha256": hashlib.sha256(data).hexdigest(),
               "caption": it.caption.strip(), "caption_file": None, "mask_file": None,
               "source": it.source or it.filename, "fixed_from": it.fixed_from or None,
               "scores": it.scores or {}}
        if it.caption.strip():
            cap = cand + caption_extension
            with open(os.path.join(stage, cap), "w", encoding="utf-8") as fh:
                fh.write(it.caption.strip() + "\n")
            rec["caption_file"] = cap
        if it.src_mask_path:
            mf = os.path.join("masks", fname)
            shutil.copyfile(it.src_mask_path, os.path.join(stage, mf))
            rec["mask_file"] = mf.replace(os.sep, "/")
        elif it.mask is not None and np.asarray(it.mask).size and float(np.asarray(it.mask).max()) > 0:
            m = np.clip(np.rint(np.asarray(it.mask, np.float32) * 255), 0, 255).astype(np.uint8)
            mf = os.path.join("masks", fname)
            with open(os.path.join(stage, mf), "wb") as fh:
                fh.write(_png_bytes(m, "L"))
            rec["mask_file"] = mf.replace(os.sep, "/")
        records.append(rec)
    if not os.listdir(os.path.join(stage, "masks")):
        os.rmdir(os.path.join(stage, "masks"))
    return records


def save_version(root: str, name: str, items: list[Item], *, note: str = "", parent: int | None = None,
                 extra: dict | None = None, caption_extension: str = ".txt") -> Version:
    """Write ``items`` as the next version of dataset ``name`` under ``root``."""
    if not items:
        raise ContinuityError("no images to save", input="images")
    folder = dataset_dir(root, name)
    holder: dict = {}

    def build(stage: str):
        records = _write_items(stage, items, caption_extension)
        # the stage folder is named after the version it becomes (".partial-vN-..."); the folder
        # name stays the authority on the number
        m = re.match(r"^\.partial-v(\d+)-", os.path.basename(stage))
        manifest = {
            "format": FORMAT, "name": name, "version": int(m.group(1)) if m else None, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parent": f"v{parent}" if parent else None, "note": note, "count": len(records),
            "caption_extension": caption_extension, "items": records,
        }
        if extra:
            manifest.update(extra)
        holder["manifest"] = manifest
        with open(os.path.join(stage, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False)
            fh.write("\n")

    number, path = new_version_folder(folder, build)
    manifest = holder["manifest"]
    # the version number is only certain once the folder is in place: record it in the returned
    # value (the file itself names the version by its folder)
    manifest = dict(manifest, version=number)
    return Version(name=name, number=number, path=path, manifest=manifest)


def load_version(root: str, name: str, version: int = 0) -> Version:
    """Version ``version`` of dataset ``name`` (0: the latest)."""
    folder = dataset_dir(root, name)
    versions = existing_versions(folder)
    if not versions:
        raise ContinuityError(f"there is no dataset '{name}' (no v1, v2, ... in {folder})", input="name")
    n = versions[-1] if not version else int(version)
    if n not in versions:
        raise ContinuityError(f"dataset '{name}' has no v{n} (it has {', '.join('v%d' % v for v in versions)})",
                              input="version")
    path = os.path.join(folder, f"v{n}")
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ContinuityError(f"cannot read {mpath}: {exc}", input="version") from exc
    manifest = dict(manifest, version=n)
    return Version(name=name, number=n, path=path, manifest=manifest)


@dataclass
class Fix:
    """A fixed image from the feedback loop: replaces ``target`` (a file of the base version), or is
    added when ``target`` is empty or not in the base."""
    target: str
    rgb: np.ndarray
    caption: str = ""
    mask: np.ndarray | None = None
    scores: dict = field(default_factory=dict)
    source: str = ""


def merge_fixed(root: str, base: Version, fixes: list[Fix], *, note: str = "",
                caption_extension: str = ".txt") -> Version:
    """The next version: every image of ``base``, with the fixed ones replaced or added."""
    if not fixes:
        raise ContinuityError("no fixed images to merge", input="fixed_images")
    by_file = {}
    for rec in base.items:
        by_file[rec["file"]] = rec
        by_file[os.path.splitext(rec["file"])[0]] = rec
    replaced: dict[str, Fix] = {}
    added: list[Fix] = []
    for fx in fixes:
        key = os.path.basename((fx.target or "").replace("\\", "/"))
        rec = by_file.get(key) or by_file.get(os.path.splitext(key)[0])
        if rec is not None:
            if rec["file"] in replaced:
                raise ContinuityError(f"two fixed images target '{rec['file']}'", input="filenames")
            replaced[rec["file"]] = fx
        else:
            added.append(fx)
    here = f"{base.name}/v{base.number}"
    items: list[Item] = []
    for rec in base.items:
        fx = replaced.get(rec["file"])
        if fx is None:
            items.append(Item(filename=rec["file"], caption=rec.get("caption", ""),
                              source=rec.get("source", ""), fixed_from=rec.get("fixed_from") or "",
                              scores=rec.get("scores", {}),
                              src_path=os.path.join(base.path, rec["file"]),
                              src_mask_path=os.path.join(base.path, rec["mask_file"]) if rec.get("mask_file") else ""))
        else:
            items.append(Item(filename=rec["file"], rgb=fx.rgb, caption=fx.caption or rec.get("caption", ""),
                              mask=fx.mask, source=fx.source or rec.get("source", ""),
                              fixed_from=f"{here}/{rec['file']}", scores=fx.scores))
    for k, fx in enumerate(added):
        items.append(Item(filename=fx.target or f"added_{k + 1}", rgb=fx.rgb, caption=fx.caption, mask=fx.mask,
                          source=fx.source or "feedback loop", scores=fx.scores))
    extra = {"merged_from": here, "replaced": sorted(replaced), "added": len(added)}
    return save_version(root, base.name, items, note=note, parent=base.number, extra=extra,
                        caption_extension=caption_extension)
