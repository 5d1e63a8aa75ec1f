"""Helpers shared by the node adapters: ComfyUI folders, tensor conversion, error messages."""
from __future__ import annotations

import functools
import inspect
import math
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


def _named_roots() -> list[tuple[str, str]]:
    """ComfyUI's folders with the names clients know them by, longest path first."""
    roots = []
    for name, getter in (("output", output_dir), ("input", input_dir), ("models", models_dir),
                         ("temp", folder_paths.get_temp_directory), ("user", folder_paths.get_user_directory),
                         ("ComfyUI", lambda: folder_paths.base_path)):
        try:
            path = getter()
        except Exception:
            continue
        for form in {os.path.abspath(path), os.path.realpath(path)}:
            roots.append((form.rstrip(os.sep), name))
    return sorted(roots, key=lambda r: -len(r[0]))


def redact_paths(message: str) -> str:
    """``message`` with the server's absolute folders replaced by the names clients know ('output/...')."""
    for path, name in _named_roots():
        if path and path in message:
            message = message.replace(path + os.sep, name + "/").replace(path, name)
    return message


def node_error(node_cls, input_name: str | None, message: str) -> ValueError:
    """An error whose text names the node and the input, as the user sees them."""
    schema = node_cls.define_schema() if hasattr(node_cls, "define_schema") else None
    name = getattr(schema, "display_name", None) or getattr(schema, "node_id", None) or node_cls.__name__
    where = f"{name}, input '{input_name}'" if input_name else name
    return ValueError(store.printable(redact_paths(f"[Continuity] {where}: {message}")))


@contextmanager
def user_errors(node_cls, default_input: str | None = None):
    """Turn core errors (ContinuityError) into messages that name the node and the input."""
    try:
        yield
    except ContinuityError as exc:
        raise node_error(node_cls, exc.input or default_input, exc.message) from exc
    except OSError as exc:   # a file that cannot be read or written: say so without the server's paths
        what = exc.strerror or type(exc).__name__
        name = store.shown(os.path.basename(str(exc.filename))) if exc.filename else ""
        raise node_error(node_cls, default_input, f"{what}{' ' + name if name else ''}") from exc


def _redacted_ui(ui):
    """The texts a node shows on its face (and /history serves to every client), without server paths."""
    if isinstance(ui, dict) and isinstance(ui.get("text"), list):
        ui = dict(ui, text=[store.printable(redact_paths(t)) if isinstance(t, str) else t for t in ui["text"]])
    return ui


#: the longest text any input takes at execution (a linked report or scores JSON included); widgets
#: that hold names, notes or captions have their own, smaller limits
MAX_INPUT_TEXT = 2_000_000


def check_texts(values: dict) -> None:
    """Every text value (or list of texts) in ``values`` is valid text: no lone surrogates, no control
    characters but line breaks and tabs, at most :data:`MAX_INPUT_TEXT` characters."""
    for name, value in values.items():
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str):
                store.check_text(v, input=name, max_len=MAX_INPUT_TEXT)


def reports_errors(default_input: str | None = None):
    """Decorator for ``execute``: every text input is checked first (:func:`check_texts`), and core
    errors come out naming the node and the input."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cls, *args, **kwargs):
            with user_errors(cls, default_input):
                check_texts(kwargs)
                check_numbers(cls, kwargs)
                revalidate(cls, kwargs)
                out = fn(cls, *args, **kwargs)
                if getattr(out, "ui", None) is not None:
                    out.ui = _redacted_ui(out.ui)
                return out
        return wrapper
    return deco


def _own_validate(cls):
    """The node's own ``validate_inputs`` (None when it keeps ComfyUI's default)."""
    for klass in cls.__mro__:
        if "validate_inputs" in vars(klass):
            return None if klass.__module__.startswith("comfy_api") else cls.validate_inputs
    return None


def revalidate(cls, values: dict) -> None:
    """Run the node's ``validate_inputs`` again on the values ``execute`` really gets.

    ComfyUI calls ``validate_inputs`` before the run with None for every input that arrives through a
    link (its value is not known yet), and checks combos and ranges only for widget values. So a name,
    a combo choice or any other rule a node checks there would be skipped for a value that comes from
    another node (a Primitive, a string or combo output). Checked again here, every rule holds for
    widget and linked values alike."""
    fn = _own_validate(cls)
    if fn is None:
        return
    args = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in values:
            args[name] = values[name]
        elif p.default is p.empty:
            args[name] = None       # what ComfyUI passes for an input it does not know yet
    verdict = fn(**args)
    if verdict is True:
        return
    if isinstance(verdict, str) and verdict.startswith("[Continuity]"):
        raise ValueError(store.printable(redact_paths(verdict)))
    raise node_error(cls, next(iter(args), None), "the inputs were refused by the node's checks"
                     + (f": {store.shown(verdict)}" if isinstance(verdict, str) else ""))


def _declared_input(cls, name: str):
    for inp in cls.define_schema().inputs or []:
        if inp.id == name:
            return inp
    return None


def check_numbers(cls, values: dict) -> None:
    """Numbers that reach ``execute`` through a link (ComfyUI checks only widget values) must still be
    inside their input's declared min/max."""
    numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               or (isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))}
    if not numbers:
        return
    declared = {inp.id: inp for inp in cls.define_schema().inputs or []}
    for name, value in numbers.items():
        inp = declared.get(name)
        if inp is None or getattr(inp, "options", None) is not None:
            continue
        lo, hi = getattr(inp, "min", None), getattr(inp, "max", None)
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                # JSON's NaN passes ComfyUI's min/max checks (every comparison with NaN is false)
                raise ContinuityError(f"{v} is not a number", input=name)
            if lo is not None and v < lo:
                raise ContinuityError(f"{v} is smaller than the minimum {lo}", input=name)
            if hi is not None and v > hi:
                raise ContinuityError(f"{v} is larger than the maximum {hi}", input=name)


def declared_problem(cls, name: str, value) -> str | None:
    """Why ``value`` is outside what input ``name`` declares (min/max, combo options), or None.

    ComfyUI skips its own checks for every input that ``validate_inputs`` names, so a validate_inputs
    that names a number or a combo calls this first.
    """
    inp = _declared_input(cls, name)
    if inp is None or value is None:
        return None
    for v in (value if isinstance(value, list) else [value]):
        options = getattr(inp, "options", None)
        if options is not None and v not in options:
            return f"{store.shown(v)} is not one of the choices"
        lo, hi = getattr(inp, "min", None), getattr(inp, "max", None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                return f"{v} is not a number"
            if lo is not None and v < lo:
                return f"{v} is smaller than the minimum {lo}"
            if hi is not None and v > hi:
                return f"{v} is larger than the maximum {hi}"
    return None


def validation_error(cls, checks: dict) -> str | bool:
    """For ``validate_inputs``: ``checks`` maps each named input to its value; each value is checked
    against its declaration (:func:`declared_problem`) and, for text, :func:`check_texts`. Returns
    True or the message naming the node and the first bad input.

    Every node with combo inputs names them in its ``validate_inputs`` and calls this: ComfyUI 0.3.x
    does not check V3 combo values at all (newer versions do, except for inputs a validate_inputs
    names), so this is what keeps an out-of-list value out on every version."""
    for name, value in checks.items():
        problem = declared_problem(cls, name, value)
        if problem:
            return str(node_error(cls, name, problem))
        try:
            check_texts({name: value})
        except ContinuityError as exc:
            return str(node_error(cls, name, exc.message))
    return True


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


def confine_dataset(path: str, input: str = "dataset_path") -> str:
    """A dataset folder inside ComfyUI's input or output folder (relative paths: the input folder)."""
    from ..continuity.paths import confine
    return confine(path, allowed_roots("input", "output"), input=input, kind="dir")


def datasets_root() -> str:
    """Where every dataset version lives: ``<ComfyUI output>/continuity/datasets/<name>/vN``."""
    return os.path.join(output_dir(), "continuity", "datasets")
