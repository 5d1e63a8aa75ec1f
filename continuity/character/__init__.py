"""Character profiles, layered dataset growth and multi-stage training plans.

Accessor API for the other stages (a node that takes an optional ``character`` input reads these
instead of its separate inputs; see ``docs/character.md``)::

    char.reference_images()        # absolute paths of the reference portraits
    char.load_reference_images()   # the same as float32 RGB arrays
    char.style_reference_images()  # style references (the portraits when none)
    char.trigger_word, char.class_phrase, char.caption_prefix(), char.prompt("smiling")
    char.style                     # "realistic" | "animated"
    char.threshold(model, default) # similarity a good shot must reach for that face model
    char.mean_embedding(model)     # stored mean identity embedding (np.float32, L2-normalised) or None
    char.latest_lora(stage=None)   # {"name", "path", "stage", "dataset_version", ...} or None
    char.latest_dataset()          # {"version", "path", ...} or None
"""
from .profile import (  # noqa: F401
    STYLES,
    Character,
    history,
    list_profiles,
    load_profile,
    record,
    record_dataset,
    record_lora,
    revisions,
    save_profile,
)


def as_character(value, *, input: str = "character"):
    """``value`` if it is a :class:`Character` (or None); a clear error otherwise.

    Other nodes call this on their optional ``character`` input.
    """
    from ..errors import ContinuityError
    if value is None or isinstance(value, Character):
        return value
    # The pack's core may be loaded under two module names (tests import ``continuity``, ComfyUI
    # loads the pack as a package): accept any object of a class named Character with the fields.
    if type(value).__name__ == "Character" and hasattr(value, "reference_images") and hasattr(value, "trigger_word"):
        return value
    raise ContinuityError(f"expected a CHARACTER (from Load Character), got {type(value).__name__}", input=input)
