"""Character profiles: one folder per character with an append-only manifest.

Layout of a profile (``<root>/<name>/``, root is ``<ComfyUI output>/continuity/characters`` in the
nodes)::

    manifest/000001.json      revision 1: {"revision", "time", "action", "summary", "changes", "profile"}
    manifest/000002.json      revision 2 ... (each file is written once, exclusively, never changed)
    references/<sha>.png      reference portraits, named by content hash (never overwritten)
    style_references/<sha>.png  style references (animated characters)
    embeddings/<model>-r<N>.safetensors   mean identity embedding per face model, per revision

Every change (new fields, references, embeddings, a LoRA after a training run, a new dataset
version) is a *new* manifest entry holding the full profile snapshot, so any earlier revision can be
loaded again and nothing is ever overwritten. Two writers racing for the same revision number are
serialised by an exclusive hard link: the loser re-reads the latest revision and re-applies its
changes on top of it.

The :class:`Character` value is what the CHARACTER socket carries. Other stages read it through
its accessors (see ``docs/character.md``): :meth:`Character.reference_images`,
:attr:`Character.trigger_word`, :attr:`Character.class_phrase`, :meth:`Character.caption_prefix`,
:meth:`Character.threshold`, :meth:`Character.mean_embedding`, :meth:`Character.latest_lora`,
:meth:`Character.latest_dataset`.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io as _io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .. import store
from ..errors import ContinuityError
from ..fsutil import atomic_write_bytes, exclusive_write_bytes
from ..paths import safe_name

STYLES = ("realistic", "animated")
MANIFEST_DIR = "manifest"
REFERENCES_DIR = "references"
STYLE_REFERENCES_DIR = "style_references"
EMBEDDINGS_DIR = "embeddings"
_REV_RE = re.compile(r"^(\d{6})\.json$")
_MODEL_RE = re.compile(r"[^A-Za-z0-9_.-]+")

ENTRY_KIND = "character-revision"
MAX_ENTRY_BYTES = 4 * 1024 * 1024
MAX_EMBEDDING_BYTES = 64 * 1024 * 1024
MAX_REFERENCES = 1000
_IMAGE_REL = r"(references|style_references)/[0-9a-f]{16}\.png"

_EMBEDDING_SCHEMA = store.Obj({
    "file": store.Str(max_len=200, pattern=EMBEDDINGS_DIR + r"/[A-Za-z0-9_.-]{1,120}\.safetensors"),
    "count": store.Int(min=1, max=100_000), "dim": store.Int(min=1, max=8192),
    "self_similarity": store.Field(store.Float(min=-1.0, max=1.0), required=False),
    "sha256": store.Str(pattern=r"[0-9a-f]{64}"),
})
_RECORDS = store.List(store.Map(store.JsonValue(max_text=4000), max_items=50), max_items=10_000)
PROFILE_SCHEMA = store.Obj({
    "name": store.Str(max_len=100),
    "trigger_word": store.Str(max_len=200),
    "class_phrase": store.Str(max_len=200),
    "style": store.Str(choices=STYLES),
    "references": store.List(store.Str(max_len=80, pattern=_IMAGE_REL), max_items=MAX_REFERENCES),
    "style_references": store.List(store.Str(max_len=80, pattern=_IMAGE_REL), max_items=MAX_REFERENCES),
    "embeddings": store.Map(_EMBEDDING_SCHEMA, max_items=50),
    "thresholds": store.Map(store.Float(min=-1.0, max=1.0), max_items=50),
    "default_threshold": store.Opt(store.Float(min=-1.0, max=1.0)),
    "style_threshold": store.Float(min=-1.0, max=1.0),
    "clip_style_threshold": store.Opt(store.Float(min=-1.0, max=1.0)),
    "datasets": _RECORDS,
    "loras": _RECORDS,
    "notes": store.Str(max_len=4000, multiline=True),
    "revision": store.Int(min=0, max=10**6),
})
ENTRY_SCHEMA = store.Obj({
    "revision": store.Int(min=1, max=10**6), "time": store.Str(max_len=64),
    "action": store.Str(max_len=64), "summary": store.Str(max_len=4000, multiline=True),
    "changes": store.Map(store.JsonValue(max_text=4000), max_items=50),
    "profile": PROFILE_SCHEMA,
})


def _stored_image(folder: str, rel: str) -> str:
    """The real path of a reference image of a profile: confined to the folder, and its content
    still the one its name (the start of its SHA-256) records."""
    path = store.resolve(folder, rel, input="character", what="reference image")
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if not digest.startswith(os.path.splitext(os.path.basename(rel))[0]):
        raise store.StoreError(f"the reference image {store.shown(rel)} was changed after it was stored; refused",
                               input="character")
    return path


@dataclass
class Character:
    """A character profile at one revision (what the CHARACTER socket carries).

    Paths inside (references, embeddings, LoRA files) are relative to :attr:`folder`, the profile
    folder, so that a profile can be moved with its ComfyUI output folder.
    """
    name: str
    trigger_word: str = ""
    class_phrase: str = ""
    style: str = "realistic"
    references: list[str] = field(default_factory=list)          # relative paths
    style_references: list[str] = field(default_factory=list)    # relative paths
    embeddings: dict[str, dict] = field(default_factory=dict)    # model -> {"file", "count", "dim"}
    thresholds: dict[str, float] = field(default_factory=dict)   # model -> min cosine similarity
    default_threshold: float | None = None                       # for models without their own
    style_threshold: float = 0.75                                # colour-statistics style similarity
    clip_style_threshold: float | None = None                    # CLIP-I style (None: from the style references)
    datasets: list[dict] = field(default_factory=list)           # {"version", "path", "note", ...}
    loras: list[dict] = field(default_factory=list)              # {"name", "path", "stage", "dataset_version", ...}
    notes: str = ""
    revision: int = 0
    folder: str = ""                                             # absolute path of the profile (not stored)

    # ------------------------------------------------------------------ accessors for other stages
    def reference_images(self) -> list[str]:
        """Absolute paths of the reference portraits (oldest first), each confined to the profile
        folder and checked against the content hash it is named by."""
        return [_stored_image(self.folder, p) for p in self.references]

    def style_reference_images(self) -> list[str]:
        """Absolute paths of the style references; the portraits when none were given."""
        refs = self.style_references or self.references
        return [_stored_image(self.folder, p) for p in refs]

    def load_reference_images(self) -> list[np.ndarray]:
        """The reference portraits as float32 RGB arrays (H, W, 3) in [0, 1]."""
        from ..imageio import load_image
        return [load_image(p)[0] for p in self.reference_images()]

    def caption_prefix(self) -> str:
        """``"<trigger word> <class phrase>"``: the start of every caption and prompt for this character."""
        return " ".join(t for t in (self.trigger_word.strip(), self.class_phrase.strip()) if t)

    def prompt(self, text: str = "") -> str:
        """A prompt that names the character: the caption prefix, then ``text``."""
        prefix = self.caption_prefix()
        text = text.strip()
        return f"{prefix}, {text}" if prefix and text else (prefix or text)

    def threshold(self, model: str | None = None, default: float | None = None) -> float | None:
        """The similarity a good shot must reach for face model ``model``.

        The model's own entry, else the profile's default threshold, else ``default`` (typically the
        model's built-in threshold, passed by the caller).
        """
        if model is not None and model in self.thresholds:
            return float(self.thresholds[model])
        if self.default_threshold is not None:
            return float(self.default_threshold)
        return default

    def mean_embedding(self, model: str) -> np.ndarray | None:
        """The stored mean identity embedding (L2-normalised, float32) for ``model``, or None."""
        entry = self.embeddings.get(model)
        if not entry:
            return None
        path = store.checked_file(self.folder, entry["file"], entry.get("sha256"), input="character",
                                  what="the profile's embedding file")
        from safetensors.numpy import load
        try:
            mean = load(store.read_bytes(self.folder, entry["file"], input="character", max_bytes=MAX_EMBEDDING_BYTES,
                                         what="the profile's embedding file"))["mean"]
        except (KeyError, ValueError, OSError) as exc:  # safetensors raises its own errors as ValueError/OSError kinds
            raise store.StoreError(f"the profile's embedding file {store.shown(entry['file'])} is damaged",
                                   input="character") from exc
        if mean.ndim != 1 or not 0 < mean.shape[0] <= 8192 or not np.all(np.isfinite(mean)):
            raise store.StoreError(f"the profile's embedding file {store.shown(os.path.basename(path))} does not hold "
                                   "a mean embedding", input="character")
        return mean.astype(np.float32)

    def latest_lora(self, stage: str | int | None = None, dataset_version: int | None = None) -> dict | None:
        """The most recently recorded LoRA (optionally of one stage / dataset version), or None.

        The dict has at least ``name`` (the file name in ComfyUI's loras folder, for LoraLoader),
        ``path`` (absolute where known), ``stage`` and ``dataset_version``.
        """
        for entry in reversed(self.loras):
            if stage is not None and str(entry.get("stage")) != str(stage):
                continue
            if dataset_version is not None and entry.get("dataset_version") != dataset_version:
                continue
            return entry
        return None

    def latest_dataset(self) -> dict | None:
        """The most recently recorded dataset version (``{"version", "path", ...}``), or None."""
        return self.datasets[-1] if self.datasets else None

    def summary(self) -> str:
        lora = self.latest_lora()
        ds = self.latest_dataset()
        lines = [
            f"{self.name} (revision {self.revision}, {self.style})",
            f"trigger: {self.trigger_word or '-'}; class: {self.class_phrase or '-'}",
            f"references: {len(self.references)}; style references: {len(self.style_references)}",
            "embeddings: " + (", ".join(f"{m} ({e.get('count', '?')} faces)" for m, e in self.embeddings.items()) or "-"),
            "thresholds: " + (", ".join(f"{m}={t:.3f}" for m, t in self.thresholds.items()) or "-")
            + (f"; default {self.default_threshold:.3f}" if self.default_threshold is not None else ""),
            f"datasets: {len(self.datasets)}" + (f" (latest v{ds.get('version')}: {ds.get('path')})" if ds else ""),
            f"LoRAs: {len(self.loras)}" + (f" (latest {lora.get('name')}, stage {lora.get('stage')})" if lora else ""),
        ]
        if self.notes:
            lines.append(f"notes: {self.notes}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("folder")
        return d

    @classmethod
    def from_dict(cls, data: dict, folder: str = "") -> Character:
        known = {f.name for f in fields(cls)}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known and k != "folder"}
        return cls(folder=folder, **kwargs)


# ---------------------------------------------------------------------- the store

def profile_dir(root: str, name: str) -> str:
    return os.path.join(root, safe_name(name, input="name"))


def list_profiles(root: str) -> list[str]:
    """Names of the profiles under ``root`` (folders with at least one manifest entry), sorted."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        if name.startswith("."):
            continue
        if revisions(os.path.join(root, name)):
            out.append(name)
    return sorted(out, key=str.lower)


def revisions(folder: str) -> list[int]:
    """Revision numbers present in a profile folder, ascending."""
    mdir = os.path.join(folder, MANIFEST_DIR)
    if not os.path.isdir(mdir):
        return []
    out = []
    for f in os.listdir(mdir):
        m = _REV_RE.match(f)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def read_entry(folder: str, revision: int) -> dict:
    """Manifest entry ``revision`` of a profile, read through the store: it must be signed by this
    server for this profile and revision, and fit :data:`ENTRY_SCHEMA`."""
    rel = f"{MANIFEST_DIR}/{revision:06d}.json"
    if not os.path.isfile(os.path.join(folder, rel)):
        raise ContinuityError(f"the profile has no revision {revision}", input="revision")
    return store.read_json(folder, rel, ENTRY_SCHEMA, kind=ENTRY_KIND,
                           context=f"{os.path.basename(folder)}/{revision:06d}", input="name",
                           what=f"revision {revision} of the profile", max_bytes=MAX_ENTRY_BYTES)


def history(folder: str) -> list[dict]:
    """Every manifest entry of a profile, oldest first (without the snapshots, for display)."""
    out = []
    for rev in revisions(folder):
        e = read_entry(folder, rev)
        out.append({k: e.get(k) for k in ("revision", "time", "action", "summary", "changes")})
    return out


def load_profile(root: str, name: str, revision: int | None = None) -> Character:
    """The profile ``name`` at ``revision`` (the latest when None or 0)."""
    folder = profile_dir(root, name)
    revs = revisions(folder)
    if not revs:
        have = list_profiles(root)
        raise ContinuityError(f"there is no character profile '{name}' in {root}"
                              + (f" (profiles: {', '.join(have)})" if have else " (no profiles yet: make one with Save Character)"),
                              input="name")
    rev = revs[-1] if not revision else int(revision)
    if rev not in revs:
        raise ContinuityError(f"profile '{name}' has no revision {rev} (it has 1..{revs[-1]})", input="revision")
    folder = store.resolve(root, os.path.basename(folder), input="name", what="the profile folder", kind="dir")
    entry = read_entry(folder, rev)
    if entry["revision"] != rev or entry["profile"]["name"] != os.path.basename(folder):
        raise store.StoreError(f"revision {rev} of the profile describes another profile or revision; refused",
                               input="name")
    char = Character.from_dict(entry["profile"], folder=folder)
    char.revision = rev
    return char


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def commit(root: str, name: str, apply: Callable[[Character | None], tuple[Character, dict]], *,
           action: str, summary: str = "", create: bool | None = None) -> Character:
    """Append a manifest entry to profile ``name``: ``apply(latest)`` returns (new character, changes).

    ``create=True`` refuses an existing profile, ``False`` a missing one, ``None`` allows both.
    ``apply`` may be called again (with the newer latest) if another writer took the revision.
    """
    folder = profile_dir(root, name)
    for _ in range(50):
        revs = revisions(folder)
        if create is True and revs:
            raise ContinuityError(f"a profile '{name}' exists already; load it and save a new revision instead",
                                  input="name")
        if create is False and not revs:
            raise ContinuityError(f"there is no character profile '{name}' to update", input="name")
        latest = load_profile(root, name) if revs else None
        char, changes = apply(copy.deepcopy(latest) if latest else None)
        rev = (revs[-1] + 1) if revs else 1
        char.name = safe_name(name, input="name")
        char.revision = rev
        char.folder = os.path.realpath(folder)
        entry = {"revision": rev, "time": _now(), "action": action, "summary": summary,
                 "changes": changes, "profile": char.to_dict()}
        entry = json.loads(json.dumps(entry, default=_json_default))
        store.check(entry, ENTRY_SCHEMA, what="the new revision", input="name")
        try:
            store.write_json_exclusive(os.path.join(folder, MANIFEST_DIR, f"{rev:06d}.json"), entry, kind=ENTRY_KIND,
                                       context=f"{char.name}/{rev:06d}", max_bytes=MAX_ENTRY_BYTES)
        except FileExistsError:
            continue
        return char
    raise ContinuityError(f"could not write a new revision of '{name}' (too many concurrent writers)", input="name")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------- files inside a profile

def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    from ..faces.base import as_uint8_rgb
    buf = _io.BytesIO()
    Image.fromarray(as_uint8_rgb(image)).save(buf, format="PNG")
    return buf.getvalue()


def store_images(folder: str, sub: str, images: Sequence[np.ndarray]) -> list[str]:
    """Save images into ``folder/sub`` named by content hash; returns the relative paths.

    The same image twice gives the same file (stored once); an existing file is never rewritten.
    """
    out = []
    for img in images:
        data = _png_bytes(img)
        rel = f"{sub}/{hashlib.sha256(data).hexdigest()[:16]}.png"
        path = os.path.join(folder, rel)
        if not os.path.exists(path):
            atomic_write_bytes(path, data)
        if rel not in out:
            out.append(rel)
    return out


def model_key(model: str) -> str:
    key = _MODEL_RE.sub("_", model.strip()).strip("._")
    if not key:
        raise ContinuityError("the face model name is empty", input="face_model")
    return key[:80]


def store_embedding(folder: str, model: str, embeddings: np.ndarray, revision_hint: int) -> dict:
    """Save the mean of ``embeddings`` (N, D) as safetensors (never overwriting); the manifest record."""
    from safetensors.numpy import save

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ContinuityError("no face embeddings to average (no face found in the references?)", input="references")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.maximum(norms, 1e-12)
    mean = emb.mean(axis=0)
    mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    spread = float(np.mean(emb @ mean))   # mean cosine of the references to their centre
    data = save({"mean": mean.astype(np.float32), "all": emb},
                metadata={"model": model, "count": str(emb.shape[0]), "dim": str(emb.shape[1])})
    stem = f"{model_key(model)}-r{revision_hint}"
    sub = os.path.join(folder, EMBEDDINGS_DIR)
    n = 0
    while True:
        fname = f"{stem}.safetensors" if n == 0 else f"{stem}_{n}.safetensors"
        path = os.path.join(sub, fname)
        try:
            exclusive_write_bytes(path, data)
            break
        except FileExistsError:
            n += 1
    return {"file": f"{EMBEDDINGS_DIR}/{fname}", "count": int(emb.shape[0]), "dim": int(emb.shape[1]),
            "self_similarity": round(spread, 4), "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------------- high-level operations

def _diff(old: Character | None, new: Character) -> dict:
    a = old.to_dict() if old else {}
    b = new.to_dict()
    return {k: v for k, v in b.items() if k not in ("revision", "name") and a.get(k) != v}


def save_profile(root: str, name: str, *, trigger_word: str | None = None, class_phrase: str | None = None,
                 style: str | None = None, references: Sequence[np.ndarray] = (),
                 style_references: Sequence[np.ndarray] = (), replace_references: bool = False,
                 thresholds: dict[str, float] | None = None, default_threshold: float | None = None,
                 style_threshold: float | None = None, clip_style_threshold: float | None = None,
                 notes: str | None = None,
                 embeddings: dict[str, np.ndarray] | None = None, action: str | None = None,
                 summary: str = "") -> Character:
    """Create the profile ``name`` or append a revision with the given fields changed.

    ``None`` (and, for text, an empty string on an existing profile) keeps the previous value.
    New references are added to the existing ones unless ``replace_references``. ``embeddings``
    maps a face model name to the (N, D) embeddings of the reference faces; their mean is stored.
    """
    name = safe_name(name, input="name")
    if style is not None and style not in STYLES:
        raise ContinuityError(f"style must be one of {', '.join(STYLES)}, not '{style}'", input="style")
    folder = profile_dir(root, name)
    ref_paths = store_images(folder, REFERENCES_DIR, references) if len(references) else []
    style_paths = store_images(folder, STYLE_REFERENCES_DIR, style_references) if len(style_references) else []
    next_rev = (revisions(folder) or [0])[-1] + 1
    emb_records = {m: store_embedding(folder, m, e, next_rev) for m, e in (embeddings or {}).items()}

    def apply(latest: Character | None):
        char = copy.deepcopy(latest) if latest else Character(name=name)
        for attr, val in (("trigger_word", trigger_word), ("class_phrase", class_phrase), ("notes", notes)):
            if val is not None and (val != "" or latest is None):
                setattr(char, attr, val.strip())
        if style is not None:
            char.style = style
        if replace_references and ref_paths:
            char.references = list(ref_paths)
        else:
            char.references = char.references + [p for p in ref_paths if p not in char.references]
        char.style_references = char.style_references + [p for p in style_paths if p not in char.style_references]
        if thresholds:
            char.thresholds = {**char.thresholds, **{k: float(v) for k, v in thresholds.items()}}
        if default_threshold is not None:
            char.default_threshold = float(default_threshold)
        if style_threshold is not None:
            char.style_threshold = float(style_threshold)
        if clip_style_threshold is not None:
            char.clip_style_threshold = float(clip_style_threshold)
        if emb_records:
            char.embeddings = {**char.embeddings, **emb_records}
        return char, _diff(latest, char)

    exists = bool(revisions(folder))
    return commit(root, name, apply, action=action or ("update" if exists else "create"), summary=summary)


def record_dataset(root: str, name: str, *, version: int | str, path: str, note: str = "",
                   extra: dict | None = None) -> Character:
    """Append a revision that records a new dataset version of the character."""
    rec = {"version": version, "path": path, "note": note, "time": _now(), **(extra or {})}

    def apply(latest: Character | None):
        assert latest is not None  # create=False: commit() raises for a missing character
        latest.datasets = latest.datasets + [rec]
        return latest, {"datasets": [rec]}
    return commit(root, name, apply, action="dataset", summary=f"dataset version {version}", create=False)


def record_lora(root: str, name: str, *, lora_name: str, path: str = "", stage: str | int = 1,
                dataset_version: int | str | None = None, job: str = "", report: dict | None = None,
                extra: dict | None = None) -> Character:
    """Append a revision that records a LoRA from a training run (its stage and consistency report)."""
    rec = {"name": lora_name, "path": path, "stage": stage, "dataset_version": dataset_version, "job": job,
           "report": report or {}, "time": _now(), **(extra or {})}

    def apply(latest: Character | None):
        assert latest is not None  # create=False: commit() raises for a missing character
        latest.loras = latest.loras + [rec]
        return latest, {"loras": [rec]}
    return commit(root, name, apply, action="training", summary=f"LoRA {lora_name} (stage {stage})", create=False)


def record(root: str, name: str, *, action: str, summary: str, changes: dict[str, Any]) -> Character:
    """Append a revision with arbitrary list appends (``{"loras": [..], "datasets": [..]}``) and field sets."""
    def apply(latest: Character | None):
        for key, val in changes.items():
            cur = getattr(latest, key)
            setattr(latest, key, cur + list(val) if isinstance(cur, list) else val)
        return latest, changes
    return commit(root, name, apply, action=action, summary=summary, create=False)
