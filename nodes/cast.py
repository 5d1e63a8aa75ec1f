"""Cast nodes (V3 adapters over ``continuity.cast``): Make Cast, Load Cast."""
from __future__ import annotations

import numpy as np
from comfy_api.latest import io, ui

from ..continuity import character as charlib
from ..continuity.cast import MAX_MEMBERS, Cast
from ..continuity.character import as_character
from ..continuity.errors import ContinuityError
from ..continuity.faces.base import as_uint8_rgb
from ..continuity.paths import safe_name
from . import _common
from ._types import CATEGORY, Character
from ._types import Cast as CastType

SLOTS = 4
MAX_NAMES_TEXT = 2000


CAST_CHOICE = "cast"


def as_cast(value):
    """``value`` if it is a CAST (or None); a clear error otherwise."""
    if value is None or isinstance(value, Cast) or type(value).__name__ == "Cast":
        return value
    raise ContinuityError(f"expected a CAST (Make Cast or Load Cast), got {type(value).__name__}", input="cast")


def describe(cast: Cast) -> str:
    lines = [f"cast of {len(cast)}:"]
    for i, m in enumerate(cast.members):
        lora = m.latest_lora()
        lines.append(f"  {i}: {m.name} (revision {m.revision}): '{m.caption_prefix()}', "
                     + (f"LoRA {lora['name']}" if lora else "no LoRA"))
    return "\n".join(lines)


class MakeCast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityMakeCast",
            display_name="Make Cast (Continuity)",
            category=f"{CATEGORY}/character",
            description=(
                "Several characters together, for shots with more than one of them: Face Tracks and Video Face "
                "Fix give each face to the member it matches by identity (above that member's threshold, best "
                "match wins, one face per member per frame); faces of no member are left alone and reported."),
            inputs=[Character.Input("character_1", tooltip="A character (Load Character).")]
            + [Character.Input(f"character_{i}", optional=True, tooltip="Another character (optional).")
               for i in range(2, SLOTS + 1)],
            outputs=[CastType.Output("cast", display_name="cast", tooltip="The characters, in this order."),
                     io.String.Output("report", display_name="report", tooltip="The members as text.")],
        )

    @classmethod
    @_common.reports_errors("character_1")
    def execute(cls, character_1, character_2=None, character_3=None, character_4=None) -> io.NodeOutput:
        members = []
        for i, c in enumerate((character_1, character_2, character_3, character_4), start=1):
            ch = as_character(c, input=f"character_{i}")
            if ch is not None:
                members.append(ch)
        cast = Cast(members)
        text = describe(cast)
        return io.NodeOutput(cast, text, ui=ui.PreviewText(text))


class LoadCast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ContinuityLoadCast",
            display_name="Load Cast (Continuity)",
            category=f"{CATEGORY}/character",
            description="A cast from character profile names (each at its latest revision), comma-separated.",
            inputs=[io.String.Input("names", default="", tooltip=f"Profile names, comma-separated (at most {MAX_MEMBERS}), "
                                                                 "e.g. 'ana, ben'.")],
            outputs=[CastType.Output("cast", display_name="cast", tooltip="The characters, in this order."),
                     io.String.Output("report", display_name="report", tooltip="The members as text.")],
        )

    @classmethod
    def _names(cls, names: str) -> list[str]:
        if len(names) > MAX_NAMES_TEXT:
            raise ContinuityError(f"the names are {len(names)} characters long (at most {MAX_NAMES_TEXT})", input="names")
        out = [n.strip() for n in names.replace("\n", ",").split(",") if n.strip()]
        if not out:
            raise ContinuityError("no profile name given; e.g. 'ana, ben'", input="names")
        if len(out) > MAX_MEMBERS:
            raise ContinuityError(f"{len(out)} names; a cast has at most {MAX_MEMBERS}", input="names")
        return [safe_name(n, input="names") for n in out]

    @classmethod
    def validate_inputs(cls, names):
        try:
            cls._names(names)
        except ContinuityError as exc:
            return str(_common.node_error(cls, "names", exc.message))
        return True

    @classmethod
    @_common.reports_errors("names")
    def execute(cls, names) -> io.NodeOutput:
        from .character_profile import characters_root
        members = [charlib.load_profile(characters_root(), n) for n in cls._names(names)]
        cast = Cast(members)
        text = describe(cast)
        return io.NodeOutput(cast, text, ui=ui.PreviewText(text))


def face_fix_with_cast(face_model, frames: list, cast, *, model, model_2, positive, negative, vae, clip, prompt: str,
                       lora_strength: float, settings, min_face: int, seed: int, steps: int, cfg: float,
                       sampler_name: str, scheduler: str, denoise_1: float, denoise_2: float,
                       keep_only_if_better: bool):
    """Face Fix with which = cast: each image's faces are given to the cast's members by identity (on
    the input image), then fixed member by member with that member's LoRA and prompt through the one
    face-fix pipeline, each guarded by its member's identity; faces of nobody are left alone.
    Returns (images, masks, count, report lines)."""
    from ..continuity.cast import cast_faces
    from ..continuity.fix import IdentityGuard, fix_faces
    from . import _glue
    cast = as_cast(cast)
    if cast is None:
        raise ContinuityError("which is 'cast' but no cast is connected: connect Make Cast or Load Cast", input="cast")
    det, emb, _ = _glue.face_backend(face_model)
    idents = cast.identities(emb, detector=det)
    lines: list[str] = []
    found: dict[int, list] = {}
    given: dict[int, list] = {}           # image -> [(member, face)]
    sims: dict[int, dict[int, float]] = {}
    for i, fr in enumerate(frames):
        rgb = as_uint8_rgb(fr)
        found[i] = [f for f in face_model.detect(rgb, image_index=i) if max(f.width, f.height) >= min_face]
        ic = cast_faces(rgb, found[i], cast, emb, detector=det)
        lines.extend(ic.describe(i))
        given[i] = ic.chosen()
        sims[i] = {id(ic.faces[f]): float(ic.assignment.similarities[f, j])
                   for j, f in enumerate(ic.assignment.face_of_member) if f is not None}
    images = [np.asarray(f, np.float32) for f in frames]
    masks = [np.zeros(f.shape[:2], np.float32) for f in frames]
    count = 0
    for j, member in enumerate(cast.members):
        todo = {i: [f for m, f in given[i] if m == j] for i in given}
        if not any(todo.values()):
            continue
        member_lines: list[str] = []
        m1, m2, pos = _glue.character_conditioning(member, model, model_2, positive, clip, prompt,
                                                   float(lora_strength), member_lines)
        lines.extend(member_lines)
        inpaint = _glue.two_pass_inpainter(m1, pos, negative, vae, seed=seed + count, steps=steps, cfg=cfg,
                                           sampler_name=sampler_name, scheduler=scheduler, denoise_1=denoise_1,
                                           denoise_2=denoise_2, model_2=m2)
        guard = IdentityGuard(idents[j], emb, lambda rgb: [f for f in face_model.detect(rgb)
                                                           if max(f.width, f.height) >= min_face],
                              min_face=min_face, enforce=bool(keep_only_if_better), setting="keep_only_if_better")
        res = fix_faces(images, detect=lambda rgb, i: found[i], choose=lambda rgb, faces, i, todo=todo: todo[i],
                        parser=face_model.parser, inpaint=inpaint, settings=settings, guard=guard,
                        before=lambda i: sims.get(i, {}), interrupted=_glue.throw_if_interrupted)
        images = [np.asarray(r, np.float32) for r in res.images]
        masks = [np.maximum(a, b) for a, b in zip(masks, res.masks)]
        count += res.count
        lines.extend(f"{member.name}: {f.line()}" for f in res.faces)
    return images, masks, count, lines


NODES = [MakeCast, LoadCast]
