"""Face tracks, cast assignment, stable crops, paste and flicker on synthetic shots built from the
real portraits (tests/support/synthetic.py): two faces moving, growing, crossing (one hidden behind
the other for two frames), a grey occluder, a hard cut, a face leaving the frame."""
from __future__ import annotations

import numpy as np
import pytest
from support.synthetic import PEOPLE, SAME_AS, Actor, head_tile, load, render

from continuity.cast import assign_faces, similarity_matrix
from continuity.character.identity import CharacterIdentity
from continuity.faces import load_analyzer, mediapipe_available
from continuity.faces.base import Face
from continuity.tracks import (
    crop_sequence,
    detect_cuts,
    paste_sequence,
    stable_track_crop,
    temporal_change,
    track_faces,
)
from continuity.tracks.tracking import Track

pytestmark = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")
N, H, W = 24, 240, 360
CUT = 14


def _paths():
    pa, pb = [], []
    for i in range(N):
        if i < CUT:
            t = i / (CUT - 1)
            pa.append((60 + 240 * t, 120, int(100 + 20 * t)))     # moves right and grows
            pb.append((300 - 240 * t, 110, 110))                  # moves left, crosses behind a
        else:
            t = (i - CUT) / 9
            pa.append((260, 130, 130))                            # after the cut: a static close-up
            pb.append((80 - 100 * t, 120, 100) if i < 22 else None)   # leaves the frame
    return pa, pb


@pytest.fixture(scope="module")
def analyzer():
    return load_analyzer("mediapipe")


@pytest.fixture(scope="module")
def shot(faces_dir):
    pa, pb = _paths()
    a = Actor("a", head_tile(faces_dir, PEOPLE["a"], 160), pa)
    b = Actor("b", head_tile(faces_dir, PEOPLE["d"], 160), pb)
    occ = {f: (0, 0, 110, 240) for f in (17, 18)}              # covers b's face briefly after the cut
    return render([b, a], N, (H, W), occluders=occ, cut=CUT)


@pytest.fixture(scope="module")
def identities(faces_dir, analyzer):
    """Each actor's identity from ANOTHER photo of the same person (as a profile's references)."""
    emb = analyzer.embedder()
    out = {}
    for key, person in (("a", "a"), ("b", "d")):
        rgb = load(faces_dir, SAME_AS[person], 400)
        f = analyzer.detect(rgb)[0]
        v = emb.embed(rgb, [f])[0]
        out[key] = CharacterIdentity(key, 1, emb.name, v / np.linalg.norm(v), float(emb.threshold), "test")
    return out


def _run(shot, analyzer, idents=None):
    emb = analyzer.embedder()
    members = list(idents) if idents else []
    ids = [idents[k] for k in members] if idents else []
    return track_faces(shot.frames, lambda rgb, i: analyzer.detect(rgb, i), embed=emb.embed,
                       score=(lambda e: similarity_matrix(e, ids)) if ids else None,
                       thresholds=[i.threshold for i in ids], members=members, samples=4)


def _who(shot, track):
    """The actor under each observed frame of the track (nearest tile centre)."""
    out = set()
    for f, face in track.observed.items():
        here = shot.truth[f]
        out.add(min(here, key=lambda k: np.hypot(here[k][0] - face.center[0], here[k][1] - face.center[1])))
    return out


def test_tracks_follow_each_face_through_crossing_occlusion_cut_and_exit(shot, analyzer):
    assert detect_cuts(shot.frames) == [CUT]
    ts = _run(shot, analyzer)
    assert ts.cuts == [CUT]
    assert len(ts.tracks) == 4, ts.describe()
    for t in ts.tracks:
        assert len(_who(shot, t)) == 1, f"track {t.id} jumps between faces"
        assert t.last < CUT or t.first >= CUT, "a track crosses the cut"
    before = [t for t in ts.tracks if t.first < CUT]
    assert sorted(t.first for t in before) == [0, 0] and all(t.last == CUT - 1 for t in before)
    b_track = next(t for t in before if _who(shot, t) == {"b"})
    assert len(b_track.frames) > len(b_track.observed)          # hidden behind a: the gap is bridged
    leaving = next(t for t in ts.tracks if t.first >= CUT and _who(shot, t) == {"b"})
    assert leaving.last <= 21 and {17, 18}.isdisjoint(leaving.observed) and leaving.first == CUT


def test_cast_of_two_and_of_one(shot, analyzer, identities):
    ts = _run(shot, analyzer, identities)
    for t in ts.tracks:
        assert t.member_name == next(iter(_who(shot, t))), ts.describe()
        assert t.similarity >= identities[t.member_name].threshold
        assert len(t.embeddings) <= 4 + 1                      # a bounded sample, not every frame
    one = _run(shot, analyzer, {"a": identities["a"]})
    for t in one.tracks:
        assert t.member_name == ("a" if _who(shot, t) == {"a"} else None)
    assert any("unknown: left alone" in line for line in one.describe())


def test_assignment_is_one_to_one_and_respects_thresholds():
    sims = np.array([[0.95, 0.94], [0.96, 0.50], [0.2, 0.3]])
    res = assign_faces(sims, [0.9, 0.9])
    # face 1 is only like member 0, so member 0 takes it and member 1 gets face 0 (best total)
    assert res.member_of_face == [1, 0, None] and res.face_of_member == [1, 0]
    assert res.unknown() == [2]
    res = assign_faces(sims, [0.99, 0.9])
    assert res.member_of_face == [1, None, None]
    assert assign_faces(np.zeros((0, 2)), [0.5, 0.5]).face_of_member == [None, None]


def _static_track(n=30, noise=3.0, seed=0):
    rng = np.random.default_rng(seed)
    t = Track(0, 0)
    for i in range(n):
        dx, dy, ds = rng.uniform(-noise, noise, 3)
        t.observed[i] = Face(box=(100 + dx, 80 + dy, 160 + dx + ds, 140 + dy + ds), score=1.0)
    return t


def test_crop_centre_is_stable_on_a_static_face():
    t = _static_track()
    tc = stable_track_crop(t, (240, 320), lambda f: None, target=128, sigma=2.0)
    c = tc.centres()
    assert len({b.side for b in tc.boxes}) == 1
    jitter = np.abs(np.diff(c, axis=0)).max()
    raw = np.array([t.observed[i].center for i in range(30)])
    assert jitter <= 1.0, jitter
    assert np.abs(np.diff(raw, axis=0)).max() > 3.0           # the detections themselves wobble


def test_crop_sequence_and_paste_are_bit_exact_outside_the_masks(shot, analyzer):
    ts = _run(shot, analyzer)
    frames = shot.frames.astype(np.float32) / 255.0
    from continuity.faces.masks import region_masks
    t = ts.tracks[0]

    def mask_of(f):
        rgb = shot.frames[f]
        return region_masks(rgb, [t.observed[f]], regions="face", which="largest").mask
    tc = stable_track_crop(t, (H, W), mask_of, target=128)
    crops, masks = crop_sequence(frames, tc)
    assert crops.shape == (len(t.frames), 128, 128, 3) and masks.shape == (len(t.frames), 128, 128)
    for k, f in enumerate(tc.frames):
        assert (masks[k].any()) == (f in t.observed)           # hidden frames get an empty mask
    edited = np.clip(crops * 0.5 + 0.3, 0, 1)
    out = paste_sequence(frames, tc, edited)
    inside = np.stack([tc.full_mask(k) > 0 for k in range(len(tc))])
    idx = list(tc.frames)
    changed = out[idx] != frames[idx]
    assert changed.any()
    assert not changed[~inside].any()
    others = [i for i in range(N) if i not in idx]
    assert np.array_equal(out[others], frames[others])


def test_flicker_higher_for_a_jittered_fix(shot, analyzer):
    ts = _run(shot, analyzer)
    static = next(t for t in ts.tracks if t.first >= CUT and _who(shot, t) == {"a"})
    tc = stable_track_crop(static, (H, W), lambda f: None, target=128)
    tc.masks[:] = 0
    tc.masks[:, tc.masks.shape[1] // 4: 3 * tc.masks.shape[1] // 4, tc.masks.shape[2] // 4: 3 * tc.masks.shape[2] // 4] = 1
    frames = shot.frames.astype(np.float32) / 255.0
    crops, _ = crop_sequence(frames, tc)
    rng = np.random.default_rng(1)
    stable = paste_sequence(frames, tc, np.clip(crops * 0.9 + 0.05, 0, 1))
    jittered = paste_sequence(frames, tc, np.clip(crops * 0.9 + rng.uniform(-0.06, 0.06, (len(tc), 1, 1, 1)) + 0.05, 0, 1))
    before, after_stable = temporal_change(frames, stable, tc)
    _, after_jitter = temporal_change(frames, jittered, tc)
    m = lambda v: float(np.mean([x for x in v if x is not None]))
    assert m(after_jitter) > 2 * m(after_stable)
    assert m(after_stable) < m(before) + 3.0


def test_windows_are_padded_at_the_border_not_shifted(shot, analyzer):
    ts = _run(shot, analyzer)
    leaving = next(t for t in ts.tracks if t.first >= CUT and _who(shot, t) == {"b"})
    tc = stable_track_crop(leaving, (H, W), lambda f: None, target=64)
    assert min(b.x0 for b in tc.boxes) < 0                         # the window runs off the left edge ...
    crops, _ = crop_sequence(shot.frames.astype(np.float32) / 255.0, tc)
    c = tc.centres()
    assert np.abs(np.diff(c[:, 0])).max() <= 12                    # ... and keeps following the face smoothly
    assert crops.shape[0] == len(tc) and np.isfinite(crops).all()


def test_stable_verdict_is_calibrated_on_the_input():
    from continuity.tracks import TrackFlicker
    fl = TrackFlicker(0, "a", list(range(5)), change_before=[None, 2.0, 2.2, 1.8, 2.0],
                      change_after=[None, 2.1, 2.3, 2.0, 2.2])
    assert fl.stable is True and abs(fl.stable_limit - 3.0) < 1e-6     # 2.0 + max(2 x 0.14, 1 grey level)
    fl.change_after = [None, 5.0, 7.0, 6.0, 5.5]
    assert fl.stable is False and "FLICKERS" in fl.describe()
