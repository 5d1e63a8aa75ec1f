"""A cast on a still: the faces of a group photo (built from the portraits) given to the members by
identity, one face per member, unknown faces left alone; a Cast's own checks."""
from __future__ import annotations

import numpy as np
import pytest

from continuity.cast import Cast, cast_faces
from continuity.errors import ContinuityError
from continuity.faces import get_detector, load_analyzer, mediapipe_available
from support.synthetic import PEOPLE, SAME_AS, group_photo, load

needs_mp = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")


class _Member:
    """The parts of a Character profile the cast reads (name; identity comes from the references)."""

    def __init__(self, name, refs):
        self.name, self.revision, self.folder, self.references, self.embeddings = name, 1, "", [name], {}
        self._refs = refs

    def threshold(self, model, default):
        return default

    def mean_embedding(self, model):
        return None

    def reference_images(self):
        return [self.name]

    def load_reference_images(self):
        return self._refs


@needs_mp
def test_group_photo_faces_go_to_their_members(faces_dir):
    names = [PEOPLE[k] for k in ("a", "b", "c", "d")]
    det = get_detector("dlib")
    g = group_photo(faces_dir, names, [360, 300, 400, 330], boxes=[det.detect(load(faces_dir, n))[0].box for n in names])
    an = load_analyzer("mediapipe")
    emb = an.embedder()
    cast = Cast([_Member(k, [load(faces_dir, SAME_AS[k], 400).astype(np.float32) / 255]) for k in ("d", "a")])
    res = cast_faces(g.image, an.detect(g.image), cast, emb)
    chosen = dict(res.chosen())
    assert sorted(chosen) == [0, 1]
    for j, key in enumerate(("d", "a")):
        cx = chosen[j].center[0]
        tile = next(i for i, (x0, _, x1, _) in enumerate(g.tiles) if x0 <= cx < x1)
        assert names[tile] == PEOPLE[key]
    assert len(res.assignment.unknown()) == 2
    text = "\n".join(res.describe(0))
    assert "unknown, left alone" in text and "d: face #" in text


def test_cast_checks():
    with pytest.raises(ContinuityError):
        Cast([])
    m = _Member("x", [])
    with pytest.raises(ContinuityError, match="twice"):
        Cast([m, _Member("x", [])])
