"""The one identity measure (continuity.scoring.similarity.identity_similarity): the mean of a face's
cosines to the reference portraits."""
from __future__ import annotations

import numpy as np

from continuity.scoring.similarity import identity_score, identity_similarity, reference_cosines


def test_the_measure_is_the_mean_of_the_cosines():
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((4, 8)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    faces = rng.standard_normal((3, 8)).astype(np.float32)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    got = identity_similarity(faces, refs)
    assert np.allclose(got, [np.mean([f @ r for r in refs]) for f in faces], atol=1e-6)
    assert got[1] == identity_score(reference_cosines(faces[1], refs)[0])
    # the cosine to the normalised mean reads higher by 1 / |mean| (what the face nodes used to report)
    mean = refs.mean(0)
    assert np.allclose(faces @ (mean / np.linalg.norm(mean)), got / np.linalg.norm(mean), atol=1e-5)
