"""The face fix, one image at a time: faces in -> per-face masks -> crops -> inpaint -> paste -> guard.

ComfyUI-free. The caller injects what needs a diffusion model or a face model:

* ``detect(rgb_uint8, image_index) -> list[Face]`` finds the faces (once per image, on the input);
* ``choose(rgb_uint8, faces, image_index) -> list[Face]`` picks the ones to fix (a subset of
  ``faces``, in the order they are fixed);
* ``inpaint(crops, masks, k, image_index) -> crops``: ``crops`` (1, T, T, 3) float32 in [0, 1],
  ``masks`` (1, T, T), ``k`` the running number of the face in the whole batch (Face Fix samples
  it with seed + k), ``image_index`` the image it comes from;
* ``parser`` draws the face regions (``continuity.faces.masks.face_masks``);
* ``guard`` (optional, :class:`IdentityGuard`) scores each fixed face against the references with
  the identity measure; :func:`keep_fix` is the one rule that decides whether the fix stays.

Each fixed face is pasted into the running result before the next face of the image is cropped,
so overlapping faces see each other's fixes; a fix the guard rejects is taken back (the running
result returns to what it was before that face) and its mask leaves the image's mask.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ContinuityError
from ..faces.base import Face, as_uint8_rgb
from ..faces.boxes import iou
from ..faces.masks import face_masks, normalise_regions
from ..scoring.similarity import embed_faces
from . import geometry

Inpaint = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]
DEFAULT_REGIONS = "face, ears, hair, beard"
EMPTY_MASK = "the face's region mask was empty"


@dataclass(frozen=True)
class FixSettings:
    """How each face is masked, cropped and pasted (the same names and units as the nodes' inputs)."""
    regions: str | tuple = DEFAULT_REGIONS
    grow: float = 5.0               # per cent of the face box (> 0 grows, < 0 shrinks)
    fill_holes: bool = True
    context: float = 1.5            # crop side = longest side of the mask's box x context
    crop_min_size: int = 128        # smallest crop side, frame pixels
    target_size: int = 1024         # crop side after the Lanczos resize
    padding: str = "edge"
    feather: float = 4.5            # blend width, per cent of the crop side
    colour_match: bool = False

    def region_tuple(self) -> tuple[str, ...]:
        regions = normalise_regions(self.regions)
        if not regions:
            raise ContinuityError("no region given; e.g. 'face, hair'", input="regions")
        return regions


@dataclass
class FaceReport:
    """What happened to one chosen face."""
    image: int
    face: int                                   # its index among the image's faces, largest first
    box: tuple[float, float, float, float]
    fixed: bool = False                         # the fix is in the result
    note: str = ""
    guarded: bool = False                       # scored before and after (a guard was given)
    before: float | None = None                 # identity measure before / after the fix
    after: float | None = None

    def line(self) -> str:
        return f"image {self.image}: {self.outcome()}"

    def outcome(self) -> str:
        """What happened, without the image number: "similarity 0.912 before the fix, 0.951 after", ..."""
        if not self.guarded:
            return f"face #{self.face} " + ("fixed" if self.fixed else f"not fixed ({self.note})")
        before = "-" if self.before is None else f"{self.before:.3f}"
        if self.note == EMPTY_MASK:
            return f"similarity {before}; not fixed ({self.note})"
        after = "face not found again" if self.after is None else f"{self.after:.3f}"
        text = f"similarity {before} before the fix, {after} after"
        if not self.note:
            return text
        return text + (f" ({self.note})" if self.fixed else f": {self.note}")


@dataclass
class FixResult:
    images: list[np.ndarray]                    # (H, W, C) float32, as given in
    masks: list[np.ndarray]                     # (H, W) float32: union of the masks of the kept fixes
    faces: list[FaceReport] = field(default_factory=list)
    faces_found: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(1 for f in self.faces if f.fixed)


def keep_fix(before: float | None, after: float | None) -> bool:
    """The keep rule: a fix stays when its face is found again and its identity measure did not drop."""
    return after is not None and (before is None or after >= before)


class IdentityGuard:
    """Scores the face at a place in an image with the identity measure against a character's
    references (``identity`` has ``similarity(embeddings)``, as
    :class:`continuity.character.identity.CharacterIdentity`). ``enforce``: take back fixes that
    :func:`keep_fix` rejects (else only report them)."""

    def __init__(self, identity, embedder, detect: Callable[[np.ndarray], list[Face]], *, min_face: int = 0,
                 enforce: bool = True, min_overlap: float = 0.3, cache=None, setting: str = "the identity guard"):
        self.identity = identity
        self.embedder = embedder
        self.detect = detect
        self.min_face = int(min_face)
        self.enforce = bool(enforce)
        self.min_overlap = float(min_overlap)
        self.cache = cache
        self.setting = setting          # how the user switches it, for the report

    def score(self, rgb: np.ndarray, box, faces: list[Face] | None = None) -> float | None:
        """The identity measure of the face found at ``box`` (IoU > min_overlap), None when there is none.
        ``faces``: the faces already found in ``rgb`` (skips detection)."""
        u8 = as_uint8_rgb(rgb)
        if faces is None:
            faces = [f for f in self.detect(u8) if max(f.width, f.height) >= self.min_face]
        if not faces:
            return None
        overlaps = [iou(box, f.box) for f in faces]
        j = int(np.argmax(overlaps))
        if overlaps[j] <= self.min_overlap:
            return None
        emb = embed_faces(u8, [faces[j]], self.embedder, cache=self.cache)
        return float(self.identity.similarity(emb)[0])


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: f.area, reverse=True)


def fix_image(image: np.ndarray, faces: list[Face], chosen: list[Face], *, parser, inpaint: Inpaint,
              settings: FixSettings, image_index: int = 0, k0: int = 0, guard: IdentityGuard | None = None,
              before: dict[int, float | None] | None = None) -> tuple[np.ndarray, np.ndarray, list[FaceReport], int]:
    """Fix the ``chosen`` faces of one (H, W, C) image. ``before``: identity measures of chosen faces
    already known (by ``id(face)``). Returns (image, mask, reports, faces inpainted)."""
    current = np.asarray(image, np.float32)
    rgb = as_uint8_rgb(current)
    order = _largest_first(faces)
    union = np.zeros(current.shape[:2], np.float32)
    reports: list[FaceReport] = []
    k = k0
    masks = face_masks(rgb, faces, chosen, regions=settings.region_tuple(), grow=settings.grow, grow_unit="percent",
                       fill_holes=settings.fill_holes, parser=parser)
    for face, m in zip(chosen, masks):
        rep = FaceReport(image=image_index, face=next(i for i, f in enumerate(order) if f is face),
                         box=(float(face.box[0]), float(face.box[1]), float(face.box[2]), float(face.box[3])))
        reports.append(rep)
        if guard is not None:
            rep.guarded = True
            known = (before or {}).get(id(face))
            rep.before = known if known is not None else guard.score(current, face.box, faces)
        mask = np.clip(m.astype(np.float32), 0.0, 1.0)
        if not mask.any():
            rep.note = EMPTY_MASK
            continue
        crops, cmask, record = geometry.crop_for_inpaint(current[None], mask[None], context=settings.context,
                                                         min_size=settings.crop_min_size,
                                                         target=settings.target_size, pad_mode=settings.padding)
        fixed = np.asarray(inpaint(crops[..., :3], cmask, k, image_index), np.float32)
        k += 1
        if crops.shape[-1] > 3:      # extra channels (alpha) of the input stay as they were
            fixed = np.concatenate([fixed, crops[..., 3:]], axis=-1)
        pasted = geometry.paste_back(record, fixed, feather_percent=settings.feather,
                                     colour_match=settings.colour_match)[0]
        if guard is not None:
            rep.after = guard.score(pasted, face.box)
            if not keep_fix(rep.before, rep.after):
                if guard.enforce:
                    rep.note = f"original kept ({guard.setting})"
                    continue
                rep.note = f"lower, kept: {guard.setting} is off"
        current = pasted
        union = np.maximum(union, mask)
        rep.fixed = True
    return current, union, reports, k - k0


def fix_faces(images: list[np.ndarray], *, detect: Callable[[np.ndarray, int], list[Face]],
              choose: Callable[[np.ndarray, list[Face], int], list[Face]], parser, inpaint: Inpaint,
              settings: FixSettings | None = None, guard: IdentityGuard | None = None,
              before: Callable[[int], dict[int, float | None]] | None = None,
              interrupted: Callable[[], None] | None = None) -> FixResult:
    """Every chosen face of every image (see the module docstring). Face k of the whole batch is
    inpainted as number ``k``; images without a chosen face pass through unchanged. ``before(i)``: the
    identity measures the chooser already worked out for image i (by ``id(face)``)."""
    settings = settings or FixSettings()
    settings.region_tuple()                     # a bad region list fails before any work
    out = FixResult(images=[], masks=[])
    k = 0
    for i, image in enumerate(images):
        if interrupted is not None:
            interrupted()
        img = np.asarray(image, np.float32)
        rgb = as_uint8_rgb(img)
        faces = list(detect(rgb, i))
        chosen = list(choose(rgb, faces, i))            # also with no face: the chooser may report it
        fixed, mask, reports, n = fix_image(img, faces, chosen, parser=parser, inpaint=inpaint, settings=settings,
                                            image_index=i, k0=k, guard=guard,
                                            before=before(i) if before is not None else None)
        k += n
        out.images.append(fixed)
        out.masks.append(mask)
        out.faces.extend(reports)
        out.faces_found.append(len(faces))
    return out
