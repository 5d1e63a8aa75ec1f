"""Where kohya-ss sd-scripts is: a server-side setting, never a widget.

Looked up in this order:

1. environment variables ``CONTINUITY_SD_SCRIPTS`` (the checkout folder) and
   ``CONTINUITY_SD_SCRIPTS_PYTHON`` (its virtual environment's Python; default: the ``venv`` or
   ``.venv`` inside the checkout);
2. ``<ComfyUI user folder>/continuity/training.json``::

       {"sd_scripts": "/opt/sd-scripts", "python": "/opt/sd-scripts/venv/bin/python",
        "tokenizer_cache_dir": "/opt/sd-scripts/tokenizers", "extra_optimizers": ["DAdaptAdam"]}

``tokenizer_cache_dir`` (or ``CONTINUITY_SD_SCRIPTS_TOKENIZER_CACHE``) is passed to every run as
``--tokenizer_cache_dir``: sd-scripts keeps the CLIP tokenizers there, which an offline server
needs. ``extra_optimizers`` names sd-scripts optimizers whose package the owner installed in
sd-scripts' environment (its requirements do not install ``dadaptation``).

The checkout must be at tag ``v0.10.1`` (read from its ``.git`` folder, a ``git worktree``'s
common folder included; no git command is run): that is the command-line contract the command
builder checks against.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ..errors import ContinuityError

REQUIRED_TAG = "v0.10.1"
ENV_ROOT = "CONTINUITY_SD_SCRIPTS"
ENV_PYTHON = "CONTINUITY_SD_SCRIPTS_PYTHON"
ENV_TOKENIZERS = "CONTINUITY_SD_SCRIPTS_TOKENIZER_CACHE"
CONFIG_NAME = os.path.join("continuity", "training.json")

INSTALL_HELP = (
    "Install kohya-ss sd-scripts once, in its own virtual environment:\n"
    "  git clone https://github.com/kohya-ss/sd-scripts && cd sd-scripts && git checkout v0.10.1\n"
    "  python -m venv venv && venv/bin/pip install torch torchvision (for your GPU) && venv/bin/pip install -r requirements.txt\n"
    f"then tell ComfyUI where it is: set {ENV_ROOT}=/path/to/sd-scripts (and {ENV_PYTHON}=/path/to/its/python "
    f"if it is not venv/bin/python), or write {{\"sd_scripts\": ..., \"python\": ...}} to "
    f"<ComfyUI>/user/{CONFIG_NAME}, and restart ComfyUI."
)


class SdScriptsNotConfigured(ContinuityError):
    """sd-scripts is missing, incomplete or at the wrong version."""


@dataclass(frozen=True)
class SdScripts:
    root: str          # the checkout
    python: str        # the interpreter of its own virtual environment
    version: str       # the tag found (or "unknown" when the version check is skipped)
    tokenizer_cache_dir: str | None = None
    extra_optimizers: tuple = ()

    def script(self, name: str) -> str:
        return os.path.join(self.root, name)


def _default_python(root: str) -> str:
    for venv in ("venv", ".venv"):
        for rel in (("bin", "python"), ("Scripts", "python.exe")):
            p = os.path.join(root, venv, *rel)
            if os.path.isfile(p):
                return p
    return ""


def _read_settings(user_dir: str | None, env) -> dict:
    out = {"root": env.get(ENV_ROOT, "").strip(), "python": env.get(ENV_PYTHON, "").strip(),
           "skip": env.get("CONTINUITY_SD_SCRIPTS_SKIP_VERSION_CHECK", "").strip() in ("1", "true", "yes"),
           "source": f"environment variable {ENV_ROOT}", "tokenizers": env.get(ENV_TOKENIZERS, "").strip(),
           "extra": ()}
    path = os.path.join(user_dir, CONFIG_NAME) if user_dir else ""
    if not path or not os.path.isfile(path):
        return out
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SdScriptsNotConfigured(f"cannot read <ComfyUI>/user/{CONFIG_NAME}: {exc}") from exc
    if not isinstance(data, dict):
        raise SdScriptsNotConfigured(f"<ComfyUI>/user/{CONFIG_NAME} must hold a JSON object")
    if not out["root"]:
        out["root"] = str(data.get("sd_scripts", "")).strip()
        out["source"] = path
        out["skip"] = out["skip"] or data.get("skip_version_check") is True
    out["python"] = out["python"] or str(data.get("python", "")).strip()
    out["tokenizers"] = out["tokenizers"] or str(data.get("tokenizer_cache_dir", "") or "").strip()
    extra = data.get("extra_optimizers", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
        raise SdScriptsNotConfigured(f"'extra_optimizers' in <ComfyUI>/user/{CONFIG_NAME} must be a list of names")
    out["extra"] = tuple(extra)
    return out


def _git_dirs(root: str) -> tuple[str, str]:
    """(the checkout's own git folder, the common folder holding refs and tags)."""
    git = os.path.join(root, ".git")
    if os.path.isfile(git):  # a worktree or submodule: "gitdir: <path>"
        with open(git, encoding="utf-8") as fh:
            line = fh.read().strip()
        if line.startswith("gitdir:"):
            git = os.path.normpath(os.path.join(root, line[7:].strip()))
    common = git
    cpath = os.path.join(git, "commondir")
    if os.path.isfile(cpath):  # a worktree's tags and packed refs live in the main repository's folder
        with open(cpath, encoding="utf-8") as fh:
            common = os.path.normpath(os.path.join(git, fh.read().strip()))
    return git, common


def git_tags_at_head(root: str) -> tuple[str | None, list[str]]:
    """The commit checked out in ``root`` and the tags that point at it (read from ``.git``)."""
    git, common = _git_dirs(root)
    head_path = os.path.join(git, "HEAD")
    if not os.path.isfile(head_path):
        return None, []
    with open(head_path, encoding="utf-8") as fh:
        head = fh.read().strip()
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    packed = os.path.join(common, "packed-refs")
    if os.path.isfile(packed):
        last = None
        with open(packed, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("^") and last:
                    peeled[last] = line[1:]
                    continue
                sha, _, ref = line.partition(" ")
                refs[ref] = sha
                last = ref
    tag_dir = os.path.join(common, "refs", "tags")
    if os.path.isdir(tag_dir):
        for name in os.listdir(tag_dir):
            p = os.path.join(tag_dir, name)
            if os.path.isfile(p):
                with open(p, encoding="utf-8") as fh:
                    refs[f"refs/tags/{name}"] = fh.read().strip()
    commit: str | None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        p = next((q for q in (os.path.join(git, ref), os.path.join(common, ref)) if os.path.isfile(q)), "")
        if p:
            with open(p, encoding="utf-8") as fh:
                commit = fh.read().strip()
        else:
            commit = refs.get(ref)
    else:
        commit = head
    if not commit:
        return None, []
    tags = []
    for ref, sha in refs.items():
        if ref.startswith("refs/tags/"):
            target = peeled.get(ref, sha)
            # an annotated tag stored loose points at a tag object; accept either id
            if commit in (sha, target):
                tags.append(ref[len("refs/tags/"):])
    return commit, sorted(tags)


def load_sd_scripts(user_dir: str | None = None, env=None, *, script: str | None = None) -> SdScripts:
    """Find and check the sd-scripts installation; a clear message if it is missing or wrong."""
    env = os.environ if env is None else env
    cfg = _read_settings(user_dir, env)
    root, python, skip, source = cfg["root"], cfg["python"], cfg["skip"], cfg["source"]
    if not root:
        raise SdScriptsNotConfigured("kohya-ss sd-scripts is not configured.\n" + INSTALL_HELP)
    root = os.path.realpath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise SdScriptsNotConfigured(f"the sd-scripts folder '{root}' (from {source}) does not exist.\n" + INSTALL_HELP)
    needed = [script] if script else ["sdxl_train_network.py"]
    for name in needed:
        if not os.path.isfile(os.path.join(root, name)):
            raise SdScriptsNotConfigured(
                f"'{root}' (from {source}) has no {name}: it is not an sd-scripts checkout.\n" + INSTALL_HELP)
    python = os.path.expanduser(python) if python else _default_python(root)
    if not python:
        raise SdScriptsNotConfigured(
            f"no Python found for sd-scripts: create its virtual environment in '{root}/venv' "
            f"or set {ENV_PYTHON}. ComfyUI's own Python ({sys.executable}) is not used: sd-scripts "
            "needs its own pinned packages.")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise SdScriptsNotConfigured(f"the sd-scripts Python '{python}' does not exist or is not executable.")
    version = "unknown"
    if not skip:
        commit, tags = git_tags_at_head(root)
        if commit is None:
            raise SdScriptsNotConfigured(
                f"cannot tell which version of sd-scripts is in '{root}' (no .git folder). Continuity needs "
                f"tag {REQUIRED_TAG}; clone it with git, or set \"skip_version_check\": true in "
                f"<ComfyUI>/user/{CONFIG_NAME} at your own risk.")
        if REQUIRED_TAG not in tags:
            found = ", ".join(tags) if tags else f"commit {commit[:10]}"
            raise SdScriptsNotConfigured(
                f"sd-scripts in '{root}' is at {found}, but Continuity builds command lines for tag "
                f"{REQUIRED_TAG}: run 'git fetch --tags && git checkout {REQUIRED_TAG}' there "
                "(and reinstall its requirements).")
        version = REQUIRED_TAG
    tokenizers = os.path.realpath(os.path.expanduser(cfg["tokenizers"])) if cfg["tokenizers"] else None
    return SdScripts(root=root, python=python, version=version, tokenizer_cache_dir=tokenizers,
                     extra_optimizers=cfg["extra"])
