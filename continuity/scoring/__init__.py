"""Identity scoring: similarity to reference portraits, calibration, reports and plots."""
from .similarity import (FaceEmbedding, ModelScores, ScoreSet, default_cache, embed_images,  # noqa: F401
                         score_set)
