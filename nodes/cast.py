"""Cast nodes (V3 adapters over ``continuity.cast``): Make Cast, Load Cast."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..continuity import character as charlib
from ..continuity.cast import MAX_MEMBERS, Cast
from ..continuity.character import as_character
from ..continuity.errors import ContinuityError
from ..continuity.paths import safe_name
from . import _common
from ._types import CATEGORY, Character
from ._types import Cast as CastType

SLOTS = 4
MAX_NAMES_TEXT = 2000


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


NODES = [MakeCast, LoadCast]
