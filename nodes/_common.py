"""Helpers shared by the node adapters: ComfyUI folders, tensor conversion, error messages."""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import folder_paths
import numpy as np
import torch

from ..continuity import store
from ..continuity.errors import ContinuityError


def _key_dir() -> str:
    """The store's secret lives in ComfyUI's system user folder, which ComfyUI never serves over HTTP."""
    getter = getattr(folder_paths, "get_system_user_directory", None)
    if getter is not None:
        return getter("continuity")
    return os.path.join(folder_paths.get_user_directory(), "__continuity")


store.configure(_key_dir)


def input_dir() -> str:
    return folder_paths.get_input_directory()


def output_dir() -> str:
    return folder_paths.get_output_directory()


def models_dir() -> str:
    return folder_paths.models_dir


def allowed_roots(*kinds: str) -> list[str]:
    """ComfyUI folders a widget path may point into: any of "input", "output", "models"."""
    table = {"input": input_dir, "output": output_dir, "models": models_dir}
    return [table[k]() for k in kinds]


def node_error(node_cls, input_name: str | None, message: str) -> ValueError:
    """An error whose text names the node and the input, as the user sees them."""
    schema = node_cls.define_schema() if hasattr(node_cls, "define_schema") else None
    name = getattr(schema, "display_name", None) or getattr(schema, "node_id", None) or node_cls.__name__
    where = f"{name}, input '{input_name}'" if input_name else name
    return ValueError(store.printable(f"[Continuity] {where}: {message}"))


@contextmanager
def user_errors(node_cls, default_input: str | None = None):
    """Turn core errors (ContinuityError) into messages that name the node and the input."""
    try:
        yield
    except ContinuityError as exc:
        raise node_error(node_cls, exc.input or default_input, exc.message) from exc


def reports_errors(default_input: str | None = None):
    """Decorator for ``execute``: core errors come out naming the node and the input."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cls, *args, **kwargs):
            with user_errors(cls, default_input):
                return fn(cls, *args, **kwargs)
        return wrapper
    return deco


def np_to_image(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float array to a ComfyUI IMAGE batch of one (1, H, W, 3)."""
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None]


def np_to_mask(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


def split_images(images) -> list[torch.Tensor]:
    """A batch (B, H, W, C), or a list of batches of any sizes, as a flat list of (H, W, C)."""
    if images is None:
        return []
    if isinstance(images, torch.Tensor):
        images = [images]
    out = []
    for t in images:
        if t.ndim == 3:
            out.append(t)
        else:
            out.extend(t[i] for i in range(t.shape[0]))
    return out


def split_masks(masks) -> list[torch.Tensor]:
    """A MASK batch (B, H, W) or (H, W), or a list of them, as a flat list of (H, W)."""
    if masks is None:
        return []
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    out = []
    for m in masks:
        if m.ndim == 2:
            out.append(m)
        else:
            out.extend(m[i] for i in range(m.shape[0]))
    return out
