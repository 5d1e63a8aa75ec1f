"""Errors that carry the name of the input they concern, so that a node can report it."""


class ContinuityError(ValueError):
    """A problem with what the user gave: a message meant for the user, and the input it concerns."""

    def __init__(self, message: str, *, input: str | None = None):
        # a message may quote what the user typed: keep it writable to any log or stream (a lone
        # surrogate in a log line once stopped ComfyUI's prompt worker)
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.input = input

    def __str__(self) -> str:
        return self.message


class PathError(ContinuityError):
    """A path that is missing, malformed or outside the folders it is allowed in."""


class MissingModelError(ContinuityError):
    """A model file that is not there and cannot be downloaded; the message says where to get it."""
