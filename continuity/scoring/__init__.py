"""Identity scoring: similarity to reference portraits, calibration, reports and plots.

The identity measure (mean of a face's cosines to the reference portraits) is
:func:`identity_similarity`; every stage that says "similar to the character" uses it.
"""
from .similarity import (FaceEmbedding, ModelScores, ScoreSet, default_cache, embed_images,  # noqa: F401
                         identity_score, identity_similarity, reference_cosines, reference_embeddings,
                         score_set)
