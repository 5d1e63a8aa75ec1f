"""Dataset versions: the one format, the one writer and the one reader.

Layout (``root`` is ``<ComfyUI output>/continuity/datasets`` in the nodes)::

    <root>/<name>/v1/            a version: never changed once it is in place
        manifest.json            signed (continuity.store): every image with its file, size, hash,
                                 caption, mask, source, what it was fixed from, its scores; and the
                                 version's ``provenance`` (how it was made: saved, merged, grown, refined)
        <file>.png, <file>.txt   images and captions (``<folder>/<file>`` for grown layers)
        masks/<file>.png         masks (white = the character)
    <root>/<name>/v2/ ...

:func:`save_version` builds a version aside and renames it into place whole; a number another
prompt or server took meanwhile is skipped (:func:`continuity.store.new_version_folder`).
:func:`load_version` reads a version back through the store: the manifest must be signed by this
server for this name and version, fit the schema, and every file it names must lie inside the
version folder (realpath) with the content hash the manifest records. Anything else is refused
with a message naming the input, never the server's absolute paths.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .. import store
from ..arrays import as_uint8_mask, as_uint8_rgb
from ..errors import ContinuityError
from ..imageio import MAX_TOTAL_PIXELS, image_size, load_image
from ..paths import safe_name

MANIFEST = "manifest.json"
FORMAT = "continuity-dataset/2"
KIND = "dataset-version"
MAX_ITEMS = 20_000
MAX_CAPTION = 4_000
MAX_NOTE = 4_000
#: the scores kept per image, as compact JSON text
MAX_SCORES_CHARS = 16_000
#: the largest manifest the reader takes, and so the largest the writer writes (a version with more
#: images, or longer captions and scores, than fit is refused when saved, never saved unreadable)
MANIFEST_MAX_BYTES = store.schema.MAX_JSON_BYTES
_ITEM_BYTES = 300            # at least this much per item record besides its caption and scores
_HEX64 = r"[0-9a-f]{64}"

ITEM_SCHEMA = store.Obj({
    "file": store.RelPath(),
    "width": store.Int(min=1, max=65_536),
    "height": store.Int(min=1, max=65_536),
    "sha256": store.Str(pattern=_HEX64),
    "caption": store.Str(max_len=MAX_CAPTION, multiline=True),
    "caption_file": store.Opt(store.RelPath()),
    "mask_file": store.Opt(store.RelPath()),
    "mask_sha256": store.Opt(store.Str(pattern=_HEX64)),
    "source": store.Str(max_len=1_000),
    "fixed_from": store.Opt(store.Str(max_len=1_000)),
    "scores": store.Map(store.JsonValue(), max_items=100),
})


def _manifest_consistent(m: dict) -> str | None:
    if m["count"] != len(m["items"]):
        return f"count {m['count']} but {len(m['items'])} items"
    files = [it["file"] for it in m["items"]]
    if len(set(files)) != len(files):
        return "an image is listed twice"
    return None


MANIFEST_SCHEMA = store.Obj({
    "format": store.Str(choices=(FORMAT,)),
    "name": store.Str(max_len=100),
    "version": store.Int(min=1, max=10**9),
    "created": store.Str(max_len=64),
    "parent": store.Opt(store.Str(pattern=r"v[0-9]{1,9}")),
    "note": store.Str(max_len=MAX_NOTE, multiline=True),
    "count": store.Int(min=0, max=MAX_ITEMS),
    "caption_extension": store.Str(pattern=r"\.[A-Za-z0-9_]{1,15}"),
    "items": store.List(ITEM_SCHEMA, max_items=MAX_ITEMS),
    "provenance": store.Map(store.JsonValue(max_text=MAX_NOTE), max_items=100),
}, check=_manifest_consistent)


@dataclass
class Item:
    """One image to store: ``rgb`` (H, W, 3) float [0,1] or uint8, or ``src_path`` (a file to copy,
    already confined by the caller, e.g. :meth:`Version.image_path`). ``folder`` puts the file in a
    sub-folder of the version (a grown layer)."""
    filename: str
    rgb: np.ndarray | None = None
    caption: str = ""
    mask: np.ndarray | None = None
    source: str = ""
    fixed_from: str = ""
    scores: dict = field(default_factory=dict)
    src_path: str = ""
    src_mask_path: str = ""
    folder: str = ""
    keep_file: str = ""          # keep this exact relative file name (an image carried over from the parent)
    src_caption_path: str = ""   # carry this caption file's bytes as they are (with ``src_path``)


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

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance", {})

    def image_path(self, rec: dict, *, input: str | None = "version") -> str:
        """The real path of an item's image: inside the version folder, with the recorded hash."""
        return store.checked_file(self.path, rec["file"], rec["sha256"], input=input, what="image")

    def mask_path(self, rec: dict, *, input: str | None = "version") -> str | None:
        if not rec.get("mask_file"):
            return None
        return store.checked_file(self.path, rec["mask_file"], rec.get("mask_sha256"), input=input, what="mask_file")


@dataclass
class LoadedItem:
    file: str
    rgb: np.ndarray          # (H, W, 3) float32
    mask: np.ndarray | None  # (H, W) float32, white = the character; None when the version has none
    caption: str


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def _stem(filename: str) -> str:
    base = os.path.basename(filename.replace("\\", "/"))
    stem = os.path.splitext(base)[0] or "image"
    cleaned = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in stem).strip("._") or "image"
    return cleaned[:80]


def _folder(sub: str) -> str:
    if not sub:
        return ""
    return "/".join(safe_name(p, input="folder") for p in sub.replace("\\", "/").split("/") if p)


def dataset_dir(root: str, name: str) -> str:
    return os.path.join(root, safe_name(name, input="name"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (no extra disk) where possible: files of a version are never modified in place."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _image_file(stage: str, it: Item, rel: str) -> tuple[bytes, int, int]:
    dst = os.path.join(stage, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if it.src_path and os.path.splitext(it.src_path)[1].lower() == os.path.splitext(rel)[1].lower():
        _link_or_copy(it.src_path, dst)      # the file as it is (a version's files are never modified)
        with open(dst, "rb") as fh:
            data = fh.read()
        width, height = image_size(dst, input="images")
        return data, width, height
    rgb = load_image(it.src_path)[0] if it.src_path else it.rgb
    if rgb is None:
        raise ContinuityError(f"dataset item {store.shown(it.filename)} has no image", input="images")
    arr = as_uint8_rgb(rgb)
    data = _png_bytes(arr)
    with open(dst, "wb") as fh:
        fh.write(data)
    return data, arr.shape[1], arr.shape[0]


def _mask_file(stage: str, it: Item, rel: str) -> str | None:
    dst = os.path.join(stage, rel)
    if it.src_mask_path:
        _link_or_copy(it.src_mask_path, dst)
        with open(dst, "rb") as fh:
            return _sha(fh.read())
    if it.mask is not None and np.asarray(it.mask).size and float(np.asarray(it.mask).max()) > 0:
        m = as_uint8_mask(it.mask)
        data = _png_bytes(m, "L")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as fh:
            fh.write(data)
        return _sha(data)
    return None


def _unique_rel(it: Item, used: set[str]) -> str:
    if it.keep_file:
        rel = store.check(it.keep_file, store.RelPath(), what="file", input="filenames")
        if not it.src_path or os.path.splitext(it.src_path)[1].lower() != os.path.splitext(rel)[1].lower():
            rel = os.path.splitext(rel)[0] + ".png"     # new pixels are stored as PNG
        if rel.lower() in used:
            raise ContinuityError(f"the file {store.shown(rel)} is listed twice", input="filenames")
        used.add(rel.lower())
        return rel
    folder = _folder(it.folder)
    stem = _stem(it.filename)
    cand, n = stem, 1
    while True:
        rel = f"{folder}/{cand}.png" if folder else f"{cand}.png"
        if rel.lower() not in used:
            used.add(rel.lower())
            return rel
        n += 1
        cand = f"{stem}_{n}"


def _write_items(stage: str, items: list[Item], caption_extension: str) -> list[dict]:
    used: set[str] = set()
    records = []
    for it in items:
        caption = store.check_text(it.caption.strip(), input="captions", max_len=MAX_CAPTION)
        rel = _unique_rel(it, used)
        data, width, height = _image_file(stage, it, rel)
        rec: dict[str, Any] = {
            "file": rel, "width": int(width), "height": int(height), "sha256": _sha(data),
            "caption": caption, "caption_file": None, "mask_file": None, "mask_sha256": None,
            "source": store.printable(it.source or it.filename)[:1000],
            "fixed_from": it.fixed_from or None, "scores": it.scores or {}}
        if caption:
            cap = os.path.splitext(rel)[0] + caption_extension
            if it.src_caption_path:
                _link_or_copy(it.src_caption_path, os.path.join(stage, cap))
            else:
                with open(os.path.join(stage, cap), "w", encoding="utf-8") as fh:
                    fh.write(caption + "\n")
            rec["caption_file"] = cap
        mrel = "masks/" + rel
        msha = _mask_file(stage, it, mrel)
        if msha:
            rec["mask_file"], rec["mask_sha256"] = mrel, msha
        records.append(rec)
    return records


def _check_records_fit(items: list[Item]) -> None:
    """Refuse, before any file is written, a version whose manifest the reader would refuse: each
    image's scores are bounded JSON, and all records together fit :data:`MANIFEST_MAX_BYTES`."""
    scores_schema = store.Map(store.JsonValue(), max_items=100)
    total = 0
    for i, it in enumerate(items):
        scores = store.check(it.scores or {}, scores_schema, what=f"the scores of image {i + 1}", input="scores")
        if not store.depth_ok(scores, store.schema.MAX_DEPTH - 3):    # under manifest / items / item
            raise ContinuityError(f"the scores of image {i + 1} are nested too deeply", input="scores")
        try:
            size = len(json.dumps(scores, ensure_ascii=False, allow_nan=False))
        except (ValueError, RecursionError):
            raise ContinuityError(f"the scores of image {i + 1} are not plain JSON numbers and text",
                                  input="scores") from None
        if size > MAX_SCORES_CHARS:
            raise ContinuityError(f"the scores of image {i + 1} are {size} characters of JSON; at most "
                                  f"{MAX_SCORES_CHARS} are kept per image", input="scores")
        total += _ITEM_BYTES + size + len(it.caption.encode("utf-8", "replace"))
    if total > MANIFEST_MAX_BYTES:
        raise ContinuityError(f"{len(items)} images with these captions and scores make a manifest of about "
                              f"{total} bytes; a version keeps at most {MANIFEST_MAX_BYTES} (save fewer images or "
                              "shorter scores)", input="images")


def save_version(root: str, name: str, items: list[Item], *, note: str = "", parent: int | None = None,
                 provenance: dict | None = None, caption_extension: str = ".txt", allow_empty: bool = False) -> Version:
    """Write ``items`` as the next version of dataset ``name`` under ``root``: the one writer.

    ``provenance`` says how the version was made (free-form, bounded JSON, stored in the manifest).
    ``allow_empty`` makes a version without images (a grown layer where no candidate passed still
    records its candidates).
    """
    if not items and not allow_empty:
        raise ContinuityError("no images to save", input="images")
    if len(items) > MAX_ITEMS:
        raise ContinuityError(f"{len(items)} images; a version holds at most {MAX_ITEMS}", input="images")
    name = safe_name(name, input="name")
    note = store.check_text(note, input="note", max_len=MAX_NOTE)
    caption_extension = store.check(caption_extension, store.Str(pattern=r"\.[A-Za-z0-9_]{1,15}"),
                                    what="caption_extension", input="caption_extension")
    prov = store.check(provenance or {}, store.Map(store.JsonValue(max_text=MAX_NOTE), max_items=100),
                       what="provenance", input="provenance")
    _check_records_fit(items)
    folder = dataset_dir(root, name)
    holder: dict = {}

    def build(stage: str, n: int) -> None:
        records = _write_items(stage, items, caption_extension)
        manifest = {
            "format": FORMAT, "name": name, "version": n,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parent": f"v{parent}" if parent else None, "note": note, "count": len(records),
            "caption_extension": caption_extension, "items": records, "provenance": prov,
        }
        store.check(manifest, MANIFEST_SCHEMA, what="the new manifest", input="images")
        holder["manifest"] = store.write_json(os.path.join(stage, MANIFEST), manifest, kind=KIND,
                                              context=f"{name}/v{n}", max_bytes=MANIFEST_MAX_BYTES)

    number, path = store.new_version_folder(folder, build)
    manifest = {k: v for k, v in holder["manifest"].items() if k != "signature"}
    return Version(name=name, number=number, path=os.path.realpath(path), manifest=manifest)


def versions_of(root: str, name: str) -> list[int]:
    return store.existing_versions(dataset_dir(root, name))


def load_version(root: str, name: str, version: int = 0, *, input: str | None = "version") -> Version:
    """Version ``version`` of dataset ``name`` (0: the latest), read and checked through the store."""
    folder = dataset_dir(root, name)
    versions = store.existing_versions(folder)
    if not versions:
        raise ContinuityError(f"there is no dataset {store.shown(name)} (no saved versions)", input="name")
    n = versions[-1] if not version else int(version)
    if n not in versions:
        raise ContinuityError(f"dataset {store.shown(name)} has no v{n} (it has "
                              f"{', '.join(f'v{v}' for v in versions[-20:])})", input="version")
    path = store.version_path(folder, n, input=input)
    manifest = store.read_json(path, MANIFEST, MANIFEST_SCHEMA, kind=KIND, context=f"{name}/v{n}", input=input,
                               what=f"the manifest of {name}/v{n}", max_bytes=MANIFEST_MAX_BYTES)
    if manifest["name"] != name or manifest["version"] != n:
        raise store.StoreError(f"the manifest of {name}/v{n} describes another version; refused", input=input)
    return Version(name=name, number=n, path=path, manifest=manifest)


def from_value(root: str, value: Any, *, input: str = "dataset") -> Version:
    """The version a DATASET socket value names, read again through the store (never trusted as given)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or \
            isinstance(value.get("version"), bool) or not isinstance(value.get("version"), int):
        raise ContinuityError("not a dataset version (connect Save or Load Dataset Version)", input=input)
    return load_version(root, value["name"], value["version"], input=input)


def read_items(ver: Version, *, input: str | None = "version", max_side: int | None = None,
               max_total_pixels: int = MAX_TOTAL_PIXELS) -> list[LoadedItem]:
    """Every image of a version with its mask and caption: the one reader of version files.

    The version's size in pixels (from its signed manifest) is checked before anything is decoded, with
    the bound Load Image Folder has: merges add images run by run, so a version can grow past what one
    process holds decoded (float32 RGB + mask: 16 bytes a pixel)."""
    total = sum(int(rec["width"]) * int(rec["height"]) for rec in ver.items)
    if total > max_total_pixels:
        raise ContinuityError(f"{ver.name}/v{ver.number} has {len(ver.items)} images of {total} pixels in all; at "
                              f"most {max_total_pixels} are loaded at once (make a smaller version, e.g. from a "
                              "Load Image Folder page)", input=input)
    out = []
    for rec in ver.items:
        rgb, _ = load_image(ver.image_path(rec, input=input), max_side=max_side, input=input)
        mask = None
        mpath = ver.mask_path(rec, input=input)
        if mpath:
            m, _ = load_image(mpath, max_side=max_side, input=input)
            if m.shape[:2] != rgb.shape[:2]:
                raise store.StoreError(f"the mask of {store.shown(rec['file'])} does not match its image's size",
                                       input=input)
            mask = m[..., 0]
        out.append(LoadedItem(rec["file"], rgb, mask, rec["caption"]))
    return out


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


def carried_over(base: Version, rec: dict, *, input: str | None = "dataset") -> Item:
    """An item of ``base`` carried into a new version as it is (its files confined and hash-checked)."""
    # the caption file is written again from the signed manifest's text (the same bytes the writer made)
    return Item(filename=rec["file"], keep_file=rec["file"], caption=rec["caption"], source=rec["source"],
                fixed_from=rec["fixed_from"] or "",  scores=rec["scores"],
                src_path=base.image_path(rec, input=input), src_mask_path=base.mask_path(rec, input=input) or "")


def merge_fixed(root: str, base: Version, fixes: list[Fix], *, note: str = "",
                caption_extension: str | None = None) -> Version:
    """The next version: every image of ``base``, with the fixed ones replaced or added."""
    if not fixes:
        raise ContinuityError("no fixed images to merge", input="fixed_images")
    by_file: dict[str, dict] = {}
    for rec in base.items:
        by_file[rec["file"]] = rec
        by_file[os.path.splitext(rec["file"])[0]] = rec
    replaced: dict[str, Fix] = {}
    added: list[Fix] = []
    for fx in fixes:
        key = (fx.target or "").replace("\\", "/")
        hit = by_file.get(key) or by_file.get(os.path.splitext(key)[0])
        if hit is not None:
            if hit["file"] in replaced:
                raise ContinuityError(f"two fixed images target {store.shown(hit['file'])}", input="filenames")
            replaced[hit["file"]] = fx
        else:
            added.append(fx)
    here = f"{base.name}/v{base.number}"
    items: list[Item] = []
    for rec in base.items:
        fixed = replaced.get(rec["file"])
        if fixed is None:
            items.append(carried_over(base, rec))
        else:
            items.append(Item(filename=rec["file"], keep_file=rec["file"], rgb=fixed.rgb,
                              caption=fixed.caption or rec["caption"], mask=fixed.mask,
                              source=fixed.source or rec["source"], fixed_from=f"{here}/{rec['file']}",
                              scores=fixed.scores))
    for k, fx in enumerate(added):
        items.append(Item(filename=fx.target or f"added_{k + 1}", rgb=fx.rgb, caption=fx.caption, mask=fx.mask,
                          source=fx.source or "feedback loop", scores=fx.scores))
    provenance = {"step": "merge", "merged_from": here, "replaced": sorted(replaced), "added": len(added)}
    return save_version(root, base.name, items, note=note, parent=base.number, provenance=provenance,
                        caption_extension=caption_extension or base.manifest["caption_extension"])
