"""The training dataset of a job: RGBA PNGs (alpha = loss mask), captions and the dataset TOML.

Mask direction: the ``masks`` given here mean *train on this pixel* (1 = the character, the
way a segmentation or face-region mask marks it). The PNG's alpha is that mask, so sd-scripts'
``alpha_mask`` loss weights the character. Reading such a PNG back with ComfyUI's LoadImage
gives ``MASK = 1 - alpha`` = ``1 - mask``: if your masks come from LoadImage of a cut-out, pass
``mask_is_loadimage=True`` (or invert them) so the character, not the background, is trained.

The TOML follows sd-scripts v0.10.1's rules: DreamBooth subsets with only ``image_dir``,
``is_reg``, ``alpha_mask``, ``class_tokens``, ``caption_extension`` and ``num_repeats``; the
regularization subset sits in the same ``[[datasets]]`` block as the character subset (one in
another block is silently never used); masks travel as alpha, never as ``conditioning_data_dir``.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..arrays import as_uint8_mask, as_uint8_rgb
from ..errors import ContinuityError

IMAGE_DIR = "img"
REG_DIR = "reg"
TOML_NAME = "dataset.toml"
SUBSET_KEYS = ("image_dir", "is_reg", "alpha_mask", "class_tokens", "caption_extension", "num_repeats")
PNG_COMPRESSION = 1  # fast (Huffman-only deflate); these files are read once for latent caching


def _to_uint8_rgb(img, index: int, input: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ContinuityError(f"image {index + 1} has shape {a.shape}; expected (H, W, 3)", input=input)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ContinuityError(f"image {index + 1} is only {a.shape[1]}x{a.shape[0]} pixels", input=input)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ContinuityError(f"image {index + 1} contains NaN or infinite values", input=input)
    return as_uint8_rgb(a)


def _to_alpha(mask, shape, index: int, loadimage: bool) -> np.ndarray:
    if mask is None:
        return np.full(shape, 255, np.uint8)
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != shape:
        # a mask of another size (a batch mixed up, or a downscaled mask): resize, do not guess wrong pixels
        if m.ndim != 2:
            raise ContinuityError(f"mask {index + 1} has shape {m.shape}", input="masks")
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32, copy=False)
    if loadimage:
        m = 1.0 - m
    return as_uint8_mask(m)


_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION,
               cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # one fixed filter instead of trying all five per row (OpenCV >= 4.11)
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _write_png(path: str, rgb: np.ndarray, alpha: np.ndarray) -> None:
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    bgra[..., 3] = alpha
    ok, buf = cv2.imencode(".png", bgra, _PNG_PARAMS)
    if not ok:
        raise ContinuityError(f"could not encode {os.path.basename(path)}")
    with open(path, "wb") as fh:  # inside the job's staging folder: the folder itself appears atomically
        fh.write(buf.tobytes())


def render_caption(template: str, *, caption: str = "", token: str = "", class_phrase: str = "", shot: str = "") -> str:
    text = template.format(caption=caption.strip(), token=token.strip(), class_phrase=class_phrase.strip(),
                           shot=shot.strip())
    text = " ".join(text.split())
    return text.strip(" ,")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a valid TOML basic string (\" \\ \n \uXXXX escapes)
    raise TypeError(type(v))


def dataset_toml(general: dict, dataset: dict, subsets: list[dict]) -> str:
    lines = ["# written by Continuity for kohya-ss sd-scripts v0.10.1", "[general]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in general.items()]
    lines += ["", "[[datasets]]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in dataset.items()]
    for sub in subsets:
        bad = set(sub) - set(SUBSET_KEYS)
        if bad:
            raise ValueError(f"subset keys not allowed: {sorted(bad)}")
        lines += ["", "  [[datasets.subsets]]"]
        lines += [f"  {k} = {toml_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


@dataclass
class DatasetWritten:
    toml_path: str
    image_count: int
    reg_count: int
    num_repeats: int
    reg_num_repeats: int
    batch_size: int


def write_dataset(stage_dir: str, final_dir: str, *, images, masks=None, captions=None, reg_images=None,
                  settings: dict, captions_cfg: dict, token: str = "", class_phrase: str = "", shot: str = "",
                  mask_is_loadimage: bool = False, workers: int = 4) -> DatasetWritten:
    """Write images (RGBA PNG), captions, a regularization subset and the TOML into ``stage_dir``.

    ``final_dir`` is where ``stage_dir`` will be moved (paths in the TOML point there).
    ``settings``: the preset's dataset settings (resolution, batch_size, num_repeats, ...).
    """
    images = list(images or [])
    if not images:
        raise ContinuityError("no training images", input="images")
    masks = list(masks) if masks is not None else []
    if masks and len(masks) not in (1, len(images)):
        raise ContinuityError(f"{len(masks)} masks for {len(images)} images: give one mask per image (or none)",
                              input="masks")
    captions = list(captions) if captions is not None else []
    if captions and len(captions) not in (1, len(images)):
        raise ContinuityError(f"{len(captions)} captions for {len(images)} images: give one per image (or none)",
                              input="captions")
    reg_images = list(reg_images or [])
    uses_reg = bool(captions_cfg.get("uses_reg", True))
    if reg_images and not uses_reg:
        raise ContinuityError("this preset trains without a regularization set; disconnect reg_images",
                              input="reg_images")
    if captions_cfg.get("needs_token") and not token.strip():
        raise ContinuityError("give an identifier token (a rare word such as 'ohwx') for the character",
                              input="token")
    if reg_images and not class_phrase.strip():
        raise ContinuityError("a regularization set needs a class phrase (e.g. 'a woman')", input="class_phrase")
    alpha_mask = bool(settings.get("alpha_mask", False))
    ext = settings.get("caption_extension", ".txt")
    img_dir = os.path.join(stage_dir, IMAGE_DIR)
    os.makedirs(img_dir)

    template = captions_cfg.get("template", "{caption}")
    template_empty = captions_cfg.get("template_no_caption", template)

    def char_job(i):
        rgb = _to_uint8_rgb(images[i], i, "images")
        mask = masks[i] if len(masks) > 1 else (masks[0] if masks else None)
        alpha = _to_alpha(mask, rgb.shape[:2], i, mask_is_loadimage)
        name = f"{i + 1:04d}"
        _write_png(os.path.join(img_dir, name + ".png"), rgb, alpha)
        cap = captions[i] if len(captions) > 1 else (captions[0] if captions else "")
        cap = cap or ""
        text = render_caption(template if cap.strip() else template_empty, caption=cap, token=token,
                              class_phrase=class_phrase, shot=shot)
        with open(os.path.join(img_dir, name + ext), "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

    def reg_job(i):
        rgb = _to_uint8_rgb(reg_images[i], i, "reg_images")
        name = f"reg_{i + 1:04d}"
        _write_png(os.path.join(reg_dir, name + ".png"), rgb, np.full(rgb.shape[:2], 255, np.uint8))
        text = render_caption(captions_cfg.get("reg_template", "{class_phrase}"), class_phrase=class_phrase)
        with open(os.path.join(reg_dir, name + ext), "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

    reg_dir = os.path.join(stage_dir, REG_DIR)
    if reg_images:
        os.makedirs(reg_dir)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(char_job, range(len(images))))
        if reg_images:
            list(pool.map(reg_job, range(len(reg_images))))

    repeats = int(settings.get("num_repeats", 1))
    reg_repeats = int(settings.get("reg_num_repeats", 1))
    char_sub = {"image_dir": os.path.join(final_dir, IMAGE_DIR), "num_repeats": repeats,
                "caption_extension": ext, "alpha_mask": alpha_mask}
    fallback = render_caption(template_empty, token=token, class_phrase=class_phrase, shot=shot)
    if fallback:
        char_sub["class_tokens"] = fallback
    subsets = [char_sub]
    if reg_images:
        subsets.append({"image_dir": os.path.join(final_dir, REG_DIR), "is_reg": True, "num_repeats": reg_repeats,
                        "caption_extension": ext, "alpha_mask": alpha_mask,
                        "class_tokens": render_caption("{class_phrase}", class_phrase=class_phrase)})
    general = {"shuffle_caption": False, "keep_tokens": 0, "caption_extension": ext}
    res = int(settings.get("resolution", 1024))
    batch = int(settings.get("batch_size", 1))
    ds = {"resolution": res, "batch_size": batch}
    if settings.get("enable_bucket", True):
        ds.update({"enable_bucket": True, "min_bucket_reso": int(settings.get("min_bucket_reso", max(64, res // 2))),
                   "max_bucket_reso": int(settings.get("max_bucket_reso", res * 2))})
    toml_path = os.path.join(stage_dir, TOML_NAME)
    with open(toml_path, "w", encoding="utf-8") as fh:
        fh.write(dataset_toml(general, ds, subsets))
    return DatasetWritten(os.path.join(final_dir, TOML_NAME), len(images), len(reg_images), repeats, reg_repeats, batch)
