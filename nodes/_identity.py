"""The character's face in the face nodes (``which = "character"``): the node side of
``continuity.character.identity`` (shared by Face Region Mask and Face Fix)."""
from __future__ import annotations

from ..continuity.character import as_character
from ..continuity.character.identity import CharacterIdentity, FaceMatch, character_identity, match_faces
from ..continuity.errors import ContinuityError
from . import _glue
from ._types import Character

CHARACTER_CHOICE = "character"
WHICH_TIP = ("character: the face most like the connected character (the mean of its cosines to the character's "
             "reference portraits, with the face model's embedder); none when the best is below the "
             "character's threshold.")


def character_input(tooltip: str):
    return Character.Input("character", optional=True, tooltip=tooltip)


class CharacterChooser:
    """Picks the character's face in each image when ``which`` is "character"."""

    def __init__(self, face_model, character, which: str):
        self.char = as_character(_glue.first(character))
        self.which = which
        self.active = which == CHARACTER_CHOICE
        self.det = self.emb = None
        if self.active:
            if self.char is None:
                raise ContinuityError("which is 'character' but no character is connected: connect Load Character "
                                      "(or choose another face)", input="character")
            self.det, self.emb, _ = _glue.face_backend(face_model)

    def note(self) -> str | None:
        """A line for the report when a character is connected but faces are not chosen by identity."""
        if self.char is not None and not self.active:
            return (f"character '{self.char.name}' is connected but which is '{self.which}': the faces are chosen "
                    f"by '{self.which}', not by identity (set which to 'character' for that)")
        return None

    def identity(self) -> CharacterIdentity:
        """The character's identity for the face model's embedder (cached per revision)."""
        return character_identity(self.char, self.emb, detector=self.det)

    def identity_line(self) -> str | None:
        return self.identity().describe() if self.active else None

    def match(self, rgb, faces, image_index: int) -> FaceMatch:
        return match_faces(rgb, faces, self.identity(), self.emb)
