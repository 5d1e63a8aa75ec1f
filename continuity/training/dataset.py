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

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


def toml_string(text: str) -> str:
    """A TOML basic string for any Unicode text: characters kept as they are (UTF-8 in the file),
    only quote, backslash and control characters escaped. JSON's ``\\ud83d``-style surrogate
    escapes are not valid TOML; a lone surrogate cannot be written at all and is refused."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            raise ContinuityError("the text holds an invalid character (a lone surrogate)", input="captions")
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{o:04X}"))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    raise TypeError(type(v))


GENERAL_KEYS = ("shuffle_caption", "keep_tokens", "caption_extension")
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso")


def dataset_toml(general: dict, dataset: dict, subsets: list[dict]) -> str:
    bad = (set(general) - set(GENERAL_KEYS)) | (set(dataset) - set(DATASET_KEYS))
    if bad:
        raise ContinuityError(f"dataset settings not allowed: {sorted(bad)}", input="job")
    lines = ["# written by Continuity for kohya-ss sd-scripts v0.10.1", "[general]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in general.items()]
    lines += ["", "[[datasets]]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in dataset.items()]
    for sub in subsets:
        bad = set(sub) - set(SUBSET_KEYS)
        if bad:
            raise ContinuityError(f"subset keys not allowed: {sorted(bad)}", input="job")
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
    sizes: list = field(default_factory=list)        # (width, height) of each character image
    reg_sizes: list = field(default_factory=list)
    resolution: int = 1024
    bucket: tuple | None = None                      # (min_bucket_reso, max_bucket_reso) or None
    warnings: list = field(default_factory=list)
    spec: dict = field(default_factory=dict)         # general / dataset / subsets, folders relative to the job

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.sizes, self.reg_sizes, repeats=self.num_repeats, batch_size=self.batch_size,
                                 resolution=self.resolution, bucket=self.bucket)


# ------------------------------------------------------------------ sd-scripts' bucketing, for step counts
BUCKET_STEP = 64


def bucket_resolutions(resolution: int, min_size: int, max_size: int, step: int = BUCKET_STEP) -> list[tuple]:
    """The bucket sizes sd-scripts v0.10.1 makes for a square ``resolution`` (same area)."""
    area = resolution * resolution
    side = int(math.sqrt(area) // step) * step
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def reg_repeats(n_reg: int, n_train: int) -> list[int]:
    """How often sd-scripts uses each regularization image: as many reg samples as character
    samples (images x repeats), whatever the reg subset's own num_repeats."""
    reps = [0] * n_reg
    if not n_reg:
        return reps
    n = 0
    while n < n_train:
        for i in range(n_reg):
            reps[i] += 1
            n += 1
            if n >= n_train:
                break
    return reps


def batches_per_epoch(sizes, reg_sizes, *, repeats: int, batch_size: int, resolution: int,
                      bucket: tuple | None) -> int:
    """Steps of one epoch as sd-scripts counts them: images (x repeats) and the balanced
    regularization images, grouped by aspect-ratio bucket, each bucket batched on its own."""
    counts: dict = {}
    if bucket:
        resos = bucket_resolutions(resolution, bucket[0], bucket[1])
        ratios = [w / h for w, h in resos]

        def key(wh):
            ar = wh[0] / max(1, wh[1])
            return min(range(len(ratios)), key=lambda i: abs(ratios[i] - ar))
    else:
        def key(wh):
            return 0
    for wh in sizes:
        counts[key(wh)] = counts.get(key(wh), 0) + repeats
    for wh, n in zip(reg_sizes, reg_repeats(len(reg_sizes), len(sizes) * repeats)):
        if n:
            counts[key(wh)] = counts.get(key(wh), 0) + n
    return sum(-(-c // max(1, batch_size)) for c in counts.values())


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
    char_sub = {"image_dir": IMAGE_DIR, "num_repeats": repeats, "caption_extension": ext, "alpha_mask": alpha_mask}
    fallback = render_caption(template_empty, token=token, class_phrase=class_phrase, shot=shot)
    if fallback:
        char_sub["class_tokens"] = fallback
    subsets = [char_sub]
    if reg_images:
        subsets.append({"image_dir": REG_DIR, "is_reg": True, "num_repeats": 1,
                        "caption_extension": ext, "alpha_mask": alpha_mask,
                        "class_tokens": render_caption("{class_phrase}", class_phrase=class_phrase)})
    general = {"shuffle_caption": False, "keep_tokens": 0, "caption_extension": ext}
    res = int(settings.get("resolution", 1024))
    batch = int(settings.get("batch_size", 1))
    ds = {"resolution": res, "batch_size": batch}
    if settings.get("enable_bucket", True):
        ds.update({"enable_bucket": True, "min_bucket_reso": int(settings.get("min_bucket_reso", max(64, res // 2))),
                   "max_bucket_reso": int(settings.get("max_bucket_reso", res * 2))})
    spec = {"general": general, "dataset": ds, "subsets": subsets}
    with open(os.path.join(stage_dir, TOML_NAME), "w", encoding="utf-8") as fh:
        fh.write(toml_for(spec, final_dir))
    warnings = []
    if masks and not alpha_mask and any(float(np.asarray(m).min()) < 0.999 for m in masks):
        warnings.append("masks were given but this preset trains without masked loss, so they are not used; "
                        "add 'masked_loss = true' to overrides to train on the masked pixels only")
    sizes = [(int(np.asarray(im).shape[1]), int(np.asarray(im).shape[0])) for im in images]
    reg_sizes = [(int(np.asarray(im).shape[1]), int(np.asarray(im).shape[0])) for im in reg_images]
    bucket = (ds["min_bucket_reso"], ds["max_bucket_reso"]) if ds.get("enable_bucket") else None
    return DatasetWritten(os.path.join(final_dir, TOML_NAME), len(images), len(reg_images), repeats, 1, batch,
                          sizes=sizes, reg_sizes=reg_sizes, resolution=res, bucket=bucket, warnings=warnings,
                          spec=spec)


def toml_for(spec: dict, job_dir: str) -> str:
    """The dataset TOML of ``spec`` (subset folders named relative to the job) for ``job_dir``.

    Only the two folders the pack writes are allowed, so a TOML made from a stored spec can
    never point sd-scripts elsewhere.
    """
    subsets = []
    for sub in spec["subsets"]:
        if sub.get("image_dir") not in (IMAGE_DIR, REG_DIR):
            raise ContinuityError("the job's dataset names a folder the pack does not write", input="job")
        subsets.append({**sub, "image_dir": os.path.join(job_dir, sub["image_dir"])})
    return dataset_toml(spec["general"], spec["dataset"], subsets)
