"""Test images of a LoRA, their consistency report, the fix of their faces and the refine step of
the 2-step loop, ComfyUI-free: sampling, scoring and inpainting are injected callables.

* :func:`make_test_images` (``generate(seed, prompt) -> image``): prompt i is
  ``char.prompt(<framing words of layer i mod 5>)`` over the framing ladder, seed i.
* :func:`score_images` (the identity measure of each image's largest face against the character's
  references, as Face Similarity gives it) and :func:`consistency_report`.
* :func:`fix_largest_faces`: the face fix (``continuity.fix``) on each image's largest face, with
  the identity guard (a fix is kept when the face's identity measure does not drop); shared by
  Grow Character Layer and the refine step.
* :func:`refine_step`: score the test images, fix those below the threshold, keep the ones that
  reach it in ``refine/`` of a new dataset version, record the version in the profile.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ContinuityError
from ..fix import FixSettings, IdentityGuard, fix_faces
from ..scoring.similarity import detect_faces, score_set
from . import growth
from . import plan as planlib
from .identity import character_identity
from .profile import record_dataset

TEST_NEGATIVE = "blurry, deformed"
TEST_CFG = 6.0
TEST_SAMPLER = "euler"
TEST_SCHEDULER = "normal"
REFINE_DENOISE_1 = 0.45         # Grow Character Layer's default fix_denoise
REFINE_DENOISE_2 = 0.40         # Face Fix's default pass 2

Generate = Callable[[int, str], np.ndarray]
Inpaint = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]


@dataclass
class TestImages:
    images: list[np.ndarray]
    prompts: list[str]
    layers: list[str]


def test_prompts(char, n: int) -> list[tuple[str, str]]:
    """(layer, prompt) of test image i: the framing ladder, repeated."""
    layers = [growth.LAYERS[i % len(growth.LAYERS)] for i in range(n)]
    return [(layer, char.prompt(growth.LAYER_PROMPT[layer])) for layer in layers]


def make_test_images(char, n: int, generate: Generate, *, cache: dict | None = None, key: tuple = ()) -> TestImages:
    """``n`` test images (seed i, prompt i). ``cache`` (a dict) keeps the images of one run under
    ``key`` + (i, prompt), so the refine step reuses the previous stage's test images."""
    out = TestImages([], [], [])
    for i, (layer, text) in enumerate(test_prompts(char, n)):
        k = (*key, i, text)
        img = cache.get(k) if cache is not None else None
        if img is None:
            img = np.asarray(generate(i, text), np.float32)
            if cache is not None:
                cache[k] = img
        out.images.append(img)
        out.prompts.append(text)
        out.layers.append(layer)
    return out


def score_images(char, images: list[np.ndarray], *, detector, embedder) -> list[tuple[float | None, int]]:
    """(identity measure of the largest face against the character's references or None, faces found)
    per image; every embedding cached by content."""
    refs = char.load_reference_images()
    if not refs:
        raise ContinuityError(f"the profile '{char.name}' has no reference portraits to score against",
                              input="character")
    ss = score_set(refs, images, [embedder], detector=detector, name="character")
    ms = next(iter(ss.models.values()))
    return [(m, c.n_faces) for m, c in zip(ms.mean, ms.candidates)]


def consistency_report(scores: list[tuple[float | None, int]], *, threshold: float | None, model: str,
                       prompts: list[str]) -> dict:
    """A stage's consistency report from its test images' scores."""
    vals = [s for s, _ in scores if s is not None]
    n = len(scores)
    return {"model": model, "count": n, "scored": len(vals), "faces_missing": n - len(vals),
            "mean": float(np.mean(vals)) if vals else None,
            "passing": sum(1 for v in vals if threshold is not None and v >= threshold), "threshold": threshold,
            "per_image": [s for s, _ in scores], "prompts": prompts}


def fix_largest_faces(char, images: list[np.ndarray], scores: list[float | None], *, detector, embedder, parser,
                      inpaint: Inpaint, settings: FixSettings, interrupted: Callable[[], None] | None = None):
    """The face fix on the largest face of each image, guarded by the identity measure. ``scores``:
    the images' identity measures already known (nothing is embedded twice). Returns (images, per
    image its :class:`continuity.fix.FaceReport`, or None when no face was found)."""
    identity = character_identity(char, embedder, detector=detector)
    guard = IdentityGuard(identity, embedder, lambda rgb: detect_faces(rgb, detector), enforce=True)
    before: dict[int, dict] = {}

    def choose(rgb, faces, i):
        if not faces:
            return []
        face = max(faces, key=lambda f: f.area)
        before[i] = {id(face): scores[i]}
        return [face]

    res = fix_faces(images, detect=lambda rgb, i: detect_faces(rgb, detector), choose=choose, parser=parser,
                    inpaint=inpaint, settings=settings, guard=guard, before=lambda i: before.get(i, {}),
                    interrupted=interrupted)
    reports: list = [None] * len(images)
    for rep in res.faces:
        reports[rep.image] = rep
    return res.images, reports


def refine_step(char, tests: TestImages, *, scores: list[tuple[float | None, int]], threshold: float | None,
                model_name: str, fix: Callable[[list[int], list[np.ndarray], list[float | None]], tuple],
                dataset_dir: str, datasets_root: str, provenance: dict, note: str = "",
                extra: dict | None = None) -> tuple[str, dict]:
    """The refine step of the 2-step loop on scored test images. ``fix(indices, images, scores)``
    fixes the faces of the images below the threshold (see :func:`fix_largest_faces`). The images
    that reach the threshold go, captioned as the dataset's captions are, into ``refine/`` of a new
    version of the character's dataset under ``datasets_root`` (the previous dataset's images carried
    over + ``refine/``; the provenance in its manifest), recorded in the profile. Returns (folder,
    summary)."""
    recs = [planlib.RefineImage(index=i, seed=i, layer=tests.layers[i], prompt=tests.prompts[i], faces=nf, before=sc)
            for i, (sc, nf) in enumerate(scores)]
    final = list(tests.images)
    todo = [i for i, r in enumerate(recs) if planlib.needs_fix(r, threshold)]
    if todo:
        fixed, reports = fix(todo, [tests.images[i] for i in todo], [recs[i].before for i in todo])
        for i, img, rep in zip(todo, fixed, reports):
            if rep is None:
                recs[i].fix_note = "the face detector found no face to fix"
                continue
            recs[i].fix_score, recs[i].fix_note = rep.after, rep.outcome()
            if rep.fixed:
                final[i] = img
    planlib.select_refined(recs, threshold)
    carry, example = planlib.captions_carry_trigger(dataset_dir, char.trigger_word)
    for r in recs:
        r.caption = planlib.refine_caption(growth.LAYER_PROMPT[r.layer], trigger=char.trigger_word,
                                           class_phrase=char.class_phrase, carry_trigger=carry, example=example)
    provenance = {**provenance, "captions": "trigger word, class phrase, framing (as the dataset's captions)" if carry
                  else "framing words (the training preset adds the trigger word and class phrase)"}
    version, folder, sub = planlib.write_refined_version(datasets_root, char.name, dataset_dir, recs, final,
                                                         provenance=provenance)
    summary = planlib.refine_summary(recs, version=version, folder=folder, subfolder=sub, previous=dataset_dir,
                                     previous_images=len(planlib.select_subset(dataset_dir, ["*"])),
                                     threshold=threshold, model=model_name)
    n = len(recs)
    record_dataset(os.path.dirname(char.folder), char.name, version=version, path=folder,
                   note=f"{note}: {summary['kept']}/{n} test images kept" if note else f"{summary['kept']}/{n} kept",
                   extra={**(extra or {}), "previous": dataset_dir, "kept": summary["kept"], "generated": n,
                          "fixed": summary["fixed"], "threshold": threshold, "model": model_name})
    return folder, summary
