"""Where kohya-ss sd-scripts is: a server-side setting, never a widget.

Looked up in this order:

1. environment variables ``CONTINUITY_SD_SCRIPTS`` (the checkout folder) and
   ``CONTINUITY_SD_SCRIPTS_PYTHON`` (its virtual environment's Python; default: the ``venv`` or
   ``.venv`` inside the checkout);
2. ``<ComfyUI user folder>/continuity/training.json``::

       {"sd_scripts": "/opt/sd-scripts", "python": "/opt/sd-scripts/venv/bin/python"}

The checkout must be at tag ``v0.10.1`` (read from its ``.git`` folder, no git command is run):
that is the command-line contract the command builder checks against.
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

    def script(self, name: str) -> str:
        return os.path.join(self.root, name)


def _default_python(root: str) -> str:
    for venv in ("venv", ".venv"):
        for rel in (("bin", "python"), ("Scripts", "python.exe")):
            p = os.path.join(root, venv, *rel)
            if os.path.isfile(p):
                return p
    return ""


def _read_settings(user_dir: str | None, env) -> tuple[str, str, bool, str]:
    root = env.get(ENV_ROOT, "").strip()
    python = env.get(ENV_PYTHON, "").strip()
    skip = env.get("CONTINUITY_SD_SCRIPTS_SKIP_VERSION_CHECK", "").strip() in ("1", "true", "yes")
    source = f"environment variable {ENV_ROOT}"
    if not root and user_dir:
        path = os.path.join(user_dir, CONFIG_NAME)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as exc:
                raise SdScriptsNotConfigured(f"cannot read {path}: {exc}") from exc
            if not isinstance(data, dict):
                raise SdScriptsNotConfigured(f"{path} must hold a JSON object")
            root = str(data.get("sd_scripts", "")).strip()
            python = python or str(data.get("python", "")).strip()
            skip = skip or bool(data.get("skip_version_check", False))
            source = path
    return root, python, skip, source


def git_tags_at_head(root: str) -> tuple[str | None, list[str]]:  # noqa: C901
    """The commit checked out in ``root`` and the tags that point at it (read from ``.git``)."""
    git = os.path.join(root, ".git")
    if os.path.isfile(git):  # a worktree: "gitdir: <path>"
        with open(git, encoding="utf-8") as fh:
            line = fh.read().strip()
        if line.startswith("gitdir:"):
            git = os.path.normpath(os.path.join(root, line[7:].strip()))
    head_path = os.path.join(git, "HEAD")
    if not os.path.isfile(head_path):
        return None, []
    with open(head_path, encoding="utf-8") as fh:
        head = fh.read().strip()
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    packed = os.path.join(git, "packed-refs")
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
    tag_dir = os.path.join(git, "refs", "tags")
    if os.path.isdir(tag_dir):
        for name in os.listdir(tag_dir):
            p = os.path.join(tag_dir, name)
            if os.path.isfile(p):
                with open(p, encoding="utf-8") as fh:
                    refs[f"refs/tags/{name}"] = fh.read().strip()
    if head.startswith("ref:"):
        ref = head[4:].strip()
        p = os.path.join(git, ref)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as fh:
                commit = fh.read().strip()
        else:
            commit = refs.get(ref, "")
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
    root, python, skip, source = _read_settings(user_dir, env)
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
    return SdScripts(root=root, python=python, version=version)
