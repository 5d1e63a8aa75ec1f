"""ComfyUI glue shared by the node modules: list inputs, interrupt, text encoding, LoRA files (one
bounded cache), inpaint sampling and decoding, and the FACE_MODEL duck typing.

Everything that needs ComfyUI's runtime and is used by more than one node lives here once; the
pipelines themselves are in the ComfyUI-free core (``continuity/``) and get these as callables.
"""
from __future__ import annotations

import functools
import inspect
import os
import threading
from collections import OrderedDict

import numpy as np
import torch

import comfy.model_management
import comfy.sd
import comfy.utils

from ..continuity.errors import ContinuityError
from ..continuity.fix import geometry


# --------------------------------------------------------------------------- inputs and cancel

def first(value, default=None):
    """Unwrap a value given to a node with ``is_input_list`` (a list of one item); None or an empty
    list gives ``default``."""
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else value


def throw_if_interrupted() -> None:
    """Stop here when the user pressed Cancel (ComfyUI's own check)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class InterruptFlag:
    """``is_set()`` turns true when the user presses Cancel in ComfyUI (for pollers such as the
    training launcher)."""

    def is_set(self) -> bool:
        return bool(comfy.model_management.processing_interrupted())


def torch_device() -> str:
    """ComfyUI's torch device as a string (``cpu`` when it cannot tell)."""
    try:
        return str(comfy.model_management.get_torch_device())
    except Exception:  # a broken device query must not stop a CPU model
        return "cpu"


# --------------------------------------------------------------------------- text and LoRA

def encode_text(clip, text: str):
    """CONDITIONING of ``text`` with ComfyUI's CLIPTextEncode."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


class LoraFiles:
    """LoRA state dicts (and their metadata) read from disk, the last ``max_items`` kept, keyed by
    the file's real path, size and modification time (a retrained LoRA under the same name is read
    anew). Applying the same LoRA to a second model, or in the next run, reads nothing."""

    def __init__(self, max_items: int = 2):
        self.max_items = max_items
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def load(self, path: str) -> tuple[dict, dict | None]:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        with self._lock:
            self._items[key] = (sd, metadata)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return sd, metadata

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


LORA_FILES = LoraFiles()


@functools.lru_cache(maxsize=1)
def lora_metadata_supported() -> bool:
    """Whether this ComfyUI's ``load_lora_for_models`` takes the file's metadata (newer cores do,
    as their LoraLoader passes it; 0.3.75 does not)."""
    try:
        return "lora_metadata" in inspect.signature(comfy.sd.load_lora_for_models).parameters
    except (TypeError, ValueError):
        return False


def apply_lora(model, clip, path: str, strength_model: float, strength_clip: float | None = None):
    """(model, clip) with the LoRA at ``path`` applied as ComfyUI's LoraLoader applies it (with the
    file's metadata where the core takes it). ``clip`` may be None."""
    sd, metadata = LORA_FILES.load(path)
    strength_clip = strength_model if strength_clip is None else strength_clip
    if lora_metadata_supported():
        return comfy.sd.load_lora_for_models(model, clip, sd, strength_model, strength_clip, lora_metadata=metadata)
    return comfy.sd.load_lora_for_models(model, clip, sd, strength_model, strength_clip)


def apply_character_lora(char, model, clip, strength: float) -> tuple[object, object, str]:
    """The character's latest LoRA applied to model and clip, if it is in ComfyUI's loras folder;
    (model, clip, a note for the report)."""
    import folder_paths
    lora = char.latest_lora()
    if lora is None or strength == 0:
        return model, clip, "no LoRA" if lora is None else "LoRA off (strength 0)"
    path = folder_paths.get_full_path("loras", lora["name"])
    if path is None:
        return model, clip, f"LoRA '{lora['name']}' is not in the loras folder; sampled without it"
    model, clip = apply_lora(model, clip, path, strength)
    return model, clip, f"LoRA {lora['name']} at {strength}"


def character_conditioning(char, model, model_2, positive, clip, prompt: str, strength: float, lines: list[str]):
    """(model, model_2, positive) with the character's LoRA and the positive conditioning (encoded
    here from ``prompt`` when ``clip`` is connected, the character's words first), as Face Fix
    does it. Notes what was done in ``lines``."""
    from ..continuity.character.prompting import with_character
    if clip is not None and positive is not None:
        raise ContinuityError("connect either positive (conditioning made elsewhere) or clip (the prompt text is "
                              "then encoded here), not both", input="positive")
    if clip is None and positive is None:
        raise ContinuityError("connect positive conditioning, or clip to have the node encode 'prompt'",
                              input="positive")
    if clip is None and prompt.strip():
        raise ContinuityError("the prompt text needs clip to be encoded: connect clip and leave positive "
                              "unconnected (or empty the prompt)", input="clip")
    if char is not None:
        with_lora, clip, note = apply_character_lora(char, model, clip, strength)
        if model_2 is not None and with_lora is not model:      # the LoRA was applied: pass 2 gets it too
            model_2, _, _ = apply_character_lora(char, model_2, None, strength)
            note += " (on model_2 too)"
        model = with_lora
        lines.append(f"character '{char.name}' (revision {char.revision}): {note}")
    if clip is not None:
        text, added = (with_character(char, prompt) if char is not None else (prompt.strip(), False))
        positive = encode_text(clip, text)
        how = ("the character's trigger word and class phrase put first" if added else
               "as written" if char is None else "as written: it names the character already")
        lines.append(f"prompt: \"{text}\" ({how})")
    elif char is not None:
        lines.append("positive: the connected conditioning, as given (connect clip and write the prompt here to "
                     "have the character's trigger word added)")
    return model, model_2, positive


# --------------------------------------------------------------------------- sampling

def is_inpaint_model(model) -> bool:
    """An inpaint model (extra input channels): it gets ComfyUI's inpaint conditioning."""
    inner = getattr(model, "model", None)
    return len(getattr(inner, "concat_keys", ()) or ()) > 0


def decode(vae, samples) -> torch.Tensor:
    """VAE-decoded (B, H, W, 3) float images on the CPU, clamped to [0, 1]."""
    out = vae.decode(samples)
    if out.ndim == 5:
        out = out.reshape(-1, *out.shape[-3:])
    return out[..., :3].float().cpu().clamp(0, 1)


def inpaint_latent(model, positive, negative, vae, image: torch.Tensor, mask: torch.Tensor):
    """(positive, negative, latent) for masked sampling: ComfyUI's InpaintModelConditioning for inpaint
    models, else the encoded image with the mask as noise mask."""
    import nodes as comfy_nodes
    if is_inpaint_model(model):
        return comfy_nodes.InpaintModelConditioning().encode(positive, negative, image, vae, mask, noise_mask=True)
    h, w = image.shape[1:3]
    return positive, negative, {"samples": vae.encode(image), "noise_mask": mask.reshape(-1, 1, h, w)}


def _check_sizes(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ContinuityError(f"expected an IMAGE batch (B, H, W, 3), got shape {tuple(image.shape)}", input="image")
    image = image[..., :3]
    b, h, w = image.shape[:3]
    if h % 8 or w % 8:
        raise ContinuityError(f"the image is {w}x{h}; both sides must be multiples of 8 for the VAE "
                              "(use Crop For Inpaint (Continuity), whose crops are multiples of 64)", input="image")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ContinuityError(f"expected a MASK batch (B, H, W), got shape {tuple(mask.shape)}", input="mask")
    if tuple(mask.shape[1:]) != (h, w):
        raise ContinuityError(f"the mask is {mask.shape[2]}x{mask.shape[1]} but the image is {w}x{h}", input="mask")
    if mask.shape[0] == 1 and b > 1:
        mask = mask.expand(b, h, w)
    elif mask.shape[0] != b:
        raise ContinuityError(f"{mask.shape[0]} masks for {b} images", input="mask")
    return image.float(), mask.float().clamp(0, 1)


def two_pass_inpaint(model, positive, negative, vae, image, mask, seed, steps, cfg, sampler_name, scheduler,
                     denoise_1=0.75, denoise_2=0.40, model_2=None, before_pass_2=None):
    """Pass 1: masked inpaint (noise mask; inpaint conditioning for inpaint models). Pass 2: the
    whole crop re-sampled without the mask at ``denoise_2``. Decode and composite into ``image``
    with ``mask``. ``before_pass_2(latent) -> latent``, when given, may change pass 2's input (e.g.
    blend it toward the previous video frame's). Returns (IMAGE (B, H, W, 3), LATENT dict)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (KSampler's own sampling code)

    image, mask = _check_sizes(image, mask)
    h, w = image.shape[1:3]
    if denoise_1 > 0:
        pos1, neg1, latent = inpaint_latent(model, positive, negative, vae, image, mask)
        latent = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, pos1, neg1,
                                             latent, denoise=denoise_1)[0]
    else:
        latent = {"samples": vae.encode(image)}
    throw_if_interrupted()
    latent = {k: v for k, v in latent.items() if k != "noise_mask"}
    if before_pass_2 is not None:
        latent = before_pass_2(latent)
    if denoise_2 > 0:
        latent = comfy_nodes.common_ksampler(model_2 if model_2 is not None else model, seed, steps, cfg,
                                             sampler_name, scheduler, positive, negative, latent,
                                             denoise=denoise_2)[0]
    throw_if_interrupted()
    if denoise_1 <= 0 and denoise_2 <= 0:
        return image.clone(), latent
    decoded = decode(vae, latent["samples"])
    if tuple(decoded.shape[1:3]) != (h, w):  # VAEs with other strides: fit back (rare)
        decoded = torch.nn.functional.interpolate(decoded.movedim(-1, 1), size=(h, w), mode="bicubic",
                                                  align_corners=False).movedim(1, -1)
    out = geometry.composite(image.cpu(), decoded, mask.cpu())
    return torch.from_numpy(out), latent


def two_pass_inpainter(model, positive, negative, vae, *, seed, steps, cfg, sampler_name, scheduler,
                       denoise_1, denoise_2, model_2=None, seeds=None, positives=None, before_pass_2=None):
    """The ``inpaint(crops, masks, k, image_index)`` callable of ``continuity.fix`` on ComfyUI's
    samplers: face k of the batch is sampled with ``seed + k`` (or ``seeds[image_index]``), with
    ``positive`` (or ``positives[image_index]``)."""
    def inpaint(crops: np.ndarray, masks: np.ndarray, k: int, image_index: int) -> np.ndarray:
        s = seeds[image_index] if seeds is not None else seed + k
        pos = positives[image_index] if positives is not None else positive
        out, _ = two_pass_inpaint(model, pos, negative, vae, torch.from_numpy(np.ascontiguousarray(crops)),
                                  torch.from_numpy(np.ascontiguousarray(masks)), s, steps, cfg, sampler_name,
                                  scheduler, denoise_1, denoise_2, model_2, before_pass_2)
        return out.numpy()
    return inpaint


# --------------------------------------------------------------------------- face models

def face_backend(face_model):
    """(detector, embedder, model name) from a FACE_MODEL value, duck-typed on the face interface."""
    if face_model is None:
        return None, None, None
    det = getattr(face_model, "detector", None)
    emb = getattr(face_model, "embedder", None)
    if callable(emb) and not hasattr(emb, "embed"):   # FaceAnalyzer.embedder() builds it on first use
        emb = emb()
    if det is None and hasattr(face_model, "detect"):
        det = face_model
    if emb is None and hasattr(face_model, "embed"):
        emb = face_model
    if det is None or emb is None or not hasattr(det, "detect") or not hasattr(emb, "embed"):
        raise ContinuityError("this face model has no identity embedder (it must detect and embed faces)",
                              input="face_model")
    return det, emb, getattr(emb, "name", None) or type(emb).__name__


def identity_backend(face_model):
    """(detector, embedder) for identity: the connected face model's, else dlib's (cached per process)."""
    if face_model is not None:
        det, emb, _ = face_backend(face_model)
        return det, emb
    from ..continuity.faces import embedders
    from ..continuity.scoring.similarity import get_face_detector
    return get_face_detector("dlib"), embedders.get_embedder("dlib")


def face_parser(face_model):
    """The region parser of a connected face model, else the built-in one (mediapipe when installed)."""
    parser = getattr(face_model, "parser", None) if face_model is not None else None
    if parser is not None:
        return parser
    from ..continuity.faces import get_parser
    return get_parser("auto")
