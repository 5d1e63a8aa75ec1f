"""Face tracks through video shots (ComfyUI-free): :mod:`.tracking` (detect, cut, link, assign to
the cast), :mod:`.crops` (temporally stable crop sequences and their paste back) and
:mod:`.flicker` (identity over frames and temporal change after motion compensation)."""
from .crops import (  # noqa: F401
    TrackCrop,
    crop_frame,
    crop_sequence,
    paste_frame,
    paste_sequence,
    smooth_series,
    stable_track_crop,
)
from .flicker import TrackFlicker, identity_series, temporal_change  # noqa: F401
from .tracking import Track, TrackSet, detect_cuts, link_tracks, track_faces  # noqa: F401
