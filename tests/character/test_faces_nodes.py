"""The mask and face-fix nodes take a CHARACTER: which = "character" picks the face most like
the character; Face Fix also applies its latest LoRA and puts its trigger word and class phrase first.

Photos: assets/faces (DeepFace unit-test images, MIT, Copyright (c) 2019 Sefik Ilkin Serengil); the
identities are listed in assets/faces/README.md. A composite puts two different people side by side.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from continuity.character import Character, load_profile, record_lora, save_profile
from continuity.character import identity as ci
from continuity.character.prompting import contains_word, with_character
from continuity.faces import mediapipe_available
from continuity.faces.base import Face

REFS = ("img1.jpg", "img2.jpg")                     # the character's reference portraits
FAR_REFS = ("img16.jpg", "img17.jpg")               # someone in none of the composites
# (the character in another photo, someone else): identities from assets/faces/README.md
PAIRS = [("img4.jpg", "img13.jpg"), ("img7.jpg", "img24.jpg")]
HEIGHT = 320


def _photo(faces_dir, name, height=HEIGHT) -> np.ndarray:
    img = Image.open(faces_dir / name).convert("RGB")
    return np.asarray(img.resize((round(img.width * height / img.height), height), Image.LANCZOS))


def _composites(faces_dir, char_photo, other_photo):
    """(character left, character right) as uint8 arrays of the same size, and the seam's x in each."""
    a, b = _photo(faces_dir, char_photo), _photo(faces_dir, other_photo)
    return (np.concatenate([a, b], 1), a.shape[1]), (np.concatenate([b, a], 1), b.shape[1])


def _profile(root, name, faces_dir, refs=REFS, **kw):
    refs = [_photo(faces_dir, f, 400).astype(np.float32) / 255 for f in refs]
    return save_profile(str(root), name, references=refs, **kw)


# ----------------------------------------------------------------------------- core

class _CountingEmbedder:
    """A stand-in embedder: the embedding is the face box's centre direction (known similarities)."""
    name = "fake"
    dim = 3
    threshold = 0.9
    model_path = "fake-weights"

    def __init__(self):
        self.calls = 0
        self.faces = 0

    def chips(self, rgb, faces):
        return [np.asarray(f.box, np.float32) for f in faces]

    def embed_chips(self, chips):
        self.calls += 1
        self.faces += len(chips)
        v = np.array([[c[0] + 1.0, c[1] + 1.0, 1.0] for c in chips], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed(self, rgb, faces):
        return self.embed_chips(self.chips(rgb, faces))


class _BoxDetector:
    name = "box"

    def detect(self, rgb):
        h, w = rgb.shape[:2]
        return [Face(box=(1.0, 1.0, w - 1.0, h - 1.0), score=1.0)]


def test_prompt_puts_the_characters_words_first_once():
    char = Character(name="ana", trigger_word="an4", class_phrase="young woman")
    assert with_character(char, "smiling, close-up") == ("an4 young woman, smiling, close-up", True)
    assert with_character(char, "photo of AN4 woman, smiling") == ("photo of AN4 woman, smiling", False)
    assert with_character(char, "an4x woman")[1] is True          # a longer word is not the trigger
    assert with_character(char, "") == ("an4 young woman", True)
    no_trigger = Character(name="bo", class_phrase="man")
    assert with_character(no_trigger, "old man, portrait") == ("old man, portrait", False)
    assert with_character(no_trigger, "portrait") == ("man, portrait", True)
    assert with_character(Character(name="c"), " x ") == ("x", False)
    assert contains_word("a (an4:1.2) b", "an4") and not contains_word("an4b", "an4")


def test_identity_from_portraits_is_computed_once_per_revision(tmp_path):
    from continuity.scoring.cache import EmbeddingCache
    rng = np.random.default_rng(0)
    refs = [rng.random((20 + i, 16, 3)).astype(np.float32) for i in range(2)]
    char = save_profile(str(tmp_path), "kim", references=refs, thresholds={"fake": 0.5})
    emb, det, cache = _CountingEmbedder(), _BoxDetector(), EmbeddingCache()
    ci.clear_cache()
    first = ci.character_identity(char, emb, detector=det, cache=cache)
    assert emb.faces == 2 and first.threshold == 0.5 and "2 reference portrait(s)" in first.source
    assert first.references.shape == (2, 3)
    assert np.allclose(np.linalg.norm(first.references, axis=1), 1.0, atol=1e-6)
    again = ci.character_identity(load_profile(str(tmp_path), "kim"), emb, detector=det, cache=cache)
    assert again.references is first.references and emb.faces == 2   # the same revision: nothing recomputed
    # a new revision with the same portraits: a new identity, but the portraits' embeddings come from
    # the content cache (shared with the scoring nodes)
    newer = save_profile(str(tmp_path), "kim", notes="n")
    third = ci.character_identity(newer, emb, detector=det, cache=cache)
    assert third is not first and emb.faces == 2 and np.allclose(third.references, first.references)


def test_identity_of_a_profile_made_again_is_not_the_old_one(tmp_path):
    """A profile deleted and saved again under the same name (revision 1 again): the threshold and the
    portraits are the new profile's."""
    import shutil
    from continuity.scoring.cache import EmbeddingCache
    rng = np.random.default_rng(5)
    emb, det, cache = _CountingEmbedder(), _BoxDetector(), EmbeddingCache()
    ci.clear_cache()
    old = save_profile(str(tmp_path), "rae", references=[rng.random((20, 16, 3)).astype(np.float32)],
                       thresholds={"fake": 0.9})
    first = ci.character_identity(old, emb, detector=det, cache=cache)
    assert first.threshold == 0.9
    shutil.rmtree(tmp_path / "rae")
    made_again = save_profile(str(tmp_path), "rae", references=[rng.random((30, 16, 3)).astype(np.float32)],
                              thresholds={"fake": 0.2})
    assert made_again.revision == old.revision
    second = ci.character_identity(made_again, emb, detector=det, cache=cache)
    assert second.threshold == 0.2 and emb.faces == 2             # the new portrait was embedded


def test_identity_is_the_mean_of_the_cosines_to_the_portraits(tmp_path):
    """The one identity measure: a face's similarity to the character is the mean of its cosines to
    the reference portraits (as Face Similarity gives it), not the cosine to their normalised mean
    (always larger); a stored mean embedding does not change it."""
    from continuity.scoring.similarity import identity_similarity
    rng = np.random.default_rng(1)
    refs = [rng.random((20 + 7 * i, 16, 3)).astype(np.float32) for i in range(3)]
    char = save_profile(str(tmp_path), "lee", references=refs,
                        embeddings={"fake": np.array([[0.0, 0.0, 1.0]], np.float32)})
    emb = _CountingEmbedder()

    class SizeDetector:           # a box that depends on the picture's size: three different embeddings
        name = "size"

        def detect(self, rgb):
            h, w = rgb.shape[:2]
            return [Face(box=(float(w % 7), float(h % 5), w - 1.0, h - 1.0), score=1.0)]

    ci.clear_cache()
    ident = ci.character_identity(char, emb, detector=SizeDetector())
    assert len({tuple(r) for r in ident.references.round(4)}) == 3
    assert ident.threshold == pytest.approx(0.9)                  # no profile threshold: the model's own
    face = np.array([[0.6, 0.0, 0.8]], np.float32)
    got = float(ident.similarity(face)[0])
    assert got == pytest.approx(float(np.mean(ident.references @ face[0])), abs=1e-6)
    assert got == float(identity_similarity(face, ident.references)[0])
    mean = ident.references.mean(0)
    assert float(face[0] @ (mean / np.linalg.norm(mean))) > got   # the old measure read higher


def test_match_picks_the_most_similar_face_and_respects_the_threshold():
    emb = _CountingEmbedder()
    rgb = np.zeros((10, 10, 3), np.uint8)
    near = Face(box=(0.0, 0.0, 2.0, 2.0), score=0.5)       # direction (1, 1, 1)
    far = Face(box=(9.0, 0.0, 12.0, 4.0), score=0.9)       # larger, pointing elsewhere
    target = np.ones((1, 3), np.float32) / np.sqrt(3)
    ident = ci.CharacterIdentity("ana", 2, "fake", target, 0.9, "test")
    m = ci.match_faces(rgb, [near, far], ident, emb)
    assert m.faces[0] is far and m.chosen is near and m.passed and m.best == 1
    assert m.best_similarity == pytest.approx(1.0)
    text = m.describe(0)
    assert "image 0: character 'ana' is face #1 of 2 (0 = largest, box 0,0-2,2)" in text and "similarity 1.000 >= threshold 0.900" in text
    strict = ci.CharacterIdentity("ana", 2, "fake", np.array([[0, 0, 1]], np.float32), 0.99, "test")
    m = ci.match_faces(rgb, [near, far], strict, emb)
    assert m.chosen is None and not m.passed and "no face matches character 'ana'" in m.describe(0)
    assert ci.match_faces(rgb, [], ident, emb).chosen is None
    calls = emb.calls
    ci.match_faces(rgb, [near, far], ident, emb)                    # the same faces again: from the cache
    assert emb.calls == calls


def test_the_characters_face_is_found_in_a_two_person_composite(faces_dir, tmp_path):
    """Real photos, dlib's identity embedding on MediaPipe detections, both orders."""
    from continuity import faces as cf
    from continuity.faces import embedders
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed")
    analyzer = cf.load_analyzer("mediapipe")
    char = _profile(tmp_path, "pat", faces_dir)
    emb = embedders.get_embedder("dlib")
    for same, other in PAIRS:
        for (rgb, seam), char_left in zip(_composites(faces_dir, same, other), (True, False)):
            faces = analyzer.detect(rgb)
            assert len(faces) == 2
            m = ci.choose_character_face(rgb, faces, char, emb, detector=analyzer.detector)
            assert m.chosen is not None, m.describe()
            cx = m.chosen.center[0]
            assert (cx < seam) == char_left, (same, other, m.describe())
            assert min(m.similarities) < m.identity.threshold        # the other person does not pass


# ----------------------------------------------------------------------------- in-process nodes

REGIONS = dict(skin=True, brows=True, eyes=True, nose=True, mouth=True, ears=True, hair=True, beard=True,
               neck=False, glasses=False, hat=False)


def _chars_root(base):
    return base / "output" / "continuity" / "characters"


def _write_composites(base, folder, faces_dir, same, other):
    d = base / "input" / folder
    d.mkdir(parents=True, exist_ok=True)
    (left, seam_l), (right, seam_r) = _composites(faces_dir, same, other)
    Image.fromarray(left).save(d / "a_left.png")
    Image.fromarray(right).save(d / "b_right.png")
    return folder, (seam_l, seam_r)


def _load_folder(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "batch", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _mask_graph(folder, char_name=None, **kw):
    g = {"fm": {"class_type": "ContinuityFaceModelLoader",
                "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
         "l": _load_folder(folder),
         "m": {"class_type": "ContinuityFaceRegionMask",
               "inputs": {"face_model": ["fm", 0], "images": ["l", 0], "which": "character", "index": 0, **REGIONS,
                          "grow": 0.0, "grow_unit": "px", "feather_px": 0.0, "fill_holes": True, "min_face": 32,
                          "if_no_face": "empty mask"}},
         "o": {"class_type": "PreviewImage", "inputs": {"images": ["m", 1]}}}
    if char_name:
        g["c"] = {"class_type": "ContinuityLoadCharacter", "inputs": {"name": char_name, "revision": 0}}
        g["m"]["inputs"]["character"] = ["c", 0]
    g["m"]["inputs"].update(kw)
    return g


def _assert_on_character(mask, seams):
    """Image 0 has the character on the left of its seam, image 1 on the right."""
    for i, (seam, left) in enumerate(zip(seams, (True, False))):
        m = np.asarray(mask[i]) > 0.5
        own = m[:, :seam].sum() if left else m[:, seam:].sum()
        other = m[:, seam:].sum() if left else m[:, :seam].sum()
        assert own > 1000, f"image {i}: no mask on the character's face"
        assert other < 0.02 * own, f"image {i}: the mask is on the other person ({other} vs {own} px)"


needs_mediapipe = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")


@pytest.mark.comfy
@needs_mediapipe
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_face_region_mask_masks_the_characters_face(comfy, faces_dir, pair):
    name = f"charmask_{pair[0][:-4]}"
    _profile(_chars_root(comfy.base), name, faces_dir)
    folder, seams = _write_composites(comfy.base, f"charmask_{pair[0][:-4]}_{pair[1][:-4]}", faces_dir, *pair)
    res = comfy.run(_mask_graph(folder, name))
    mask, info = res.value("m", 0), res.value("m", 3)
    assert tuple(mask.shape[:1]) == (2,) and res.value("m", 2) == 4
    _assert_on_character(mask.numpy(), seams)
    assert f"character '{name}' (revision 1): dlib, 2 reference portrait(s)" in info
    assert f"image 0: character '{name}' is face" in info and f"image 1: character '{name}' is face" in info
    assert "similarity" in info and ">= threshold 0.930" in info


@pytest.mark.comfy
@needs_mediapipe
def test_detected_faces_feed_the_choice(comfy, faces_dir):
    """Faces from Detect Faces are matched too (a stored mean embedding does not change the measure)."""
    from continuity.faces import embedders
    from continuity.scoring.similarity import embed_images
    same, other = PAIRS[0]
    refs = [_photo(faces_dir, f, 400) for f in REFS]
    stored = np.stack([r.embedding for r in embed_images(refs, embedders.get_embedder("dlib"))])
    _profile(_chars_root(comfy.base), "charmask_stored", faces_dir, embeddings={"dlib": stored})
    folder, seams = _write_composites(comfy.base, "charmask_stored_imgs", faces_dir, same, other)
    g = _mask_graph(folder, "charmask_stored")
    g["d"] = {"class_type": "ContinuityFaceDetect",
              "inputs": {"face_model": ["fm", 0], "images": ["l", 0], "min_face": 32}}
    g["m"]["inputs"]["faces"] = ["d", 0]
    res = comfy.run(g)
    _assert_on_character(res.value("m", 0).numpy(), seams)
    assert "dlib, 2 reference portrait(s)" in res.value("m", 3)


@pytest.mark.comfy
@needs_mediapipe
def test_no_matching_face_follows_if_no_face(comfy, faces_dir):
    _profile(_chars_root(comfy.base), "charmask_far", faces_dir, refs=FAR_REFS)   # someone not in the pictures
    folder, _ = _write_composites(comfy.base, "charmask_far_imgs", faces_dir, *PAIRS[0])
    res = comfy.run(_mask_graph(folder, "charmask_far"))
    assert float(res.value("m", 0).max()) == 0.0 and res.value("m", 2) == 4
    assert "image 0: no face matches character 'charmask_far'" in res.value("m", 3)
    bad = comfy.run(_mask_graph(folder, "charmask_far", if_no_face="error"), expect_success=False)
    msg = bad.error["exception_message"]
    assert msg.startswith("[Continuity] Face Region Mask (Continuity), input 'character': image 0: no face matches "
                          "character 'charmask_far'") and "< threshold 0.930" in msg


@pytest.mark.comfy
@needs_mediapipe
def test_which_character_needs_a_character_and_old_choices_still_work(comfy, faces_dir):
    _profile(_chars_root(comfy.base), "charmask_old", faces_dir)
    folder, _ = _write_composites(comfy.base, "charmask_old_imgs", faces_dir, *PAIRS[0])
    bad = comfy.run(_mask_graph(folder), expect_success=False)
    msg = bad.error["exception_message"]
    assert "Face Region Mask (Continuity), input 'character': which is 'character' but no character" in msg
    # an existing choice with a character connected: the choice is kept and the info says so
    res = comfy.run(_mask_graph(folder, "charmask_old", which="largest"))
    assert "is connected but which is 'largest'" in res.value("m", 3)
    plain = comfy.run(_mask_graph(folder, which="largest"))
    assert float((res.value("m", 0) - plain.value("m", 0)).abs().max()) == 0.0


# ----------------------------------------------------------------------------- Face Fix

def _tiny_lora(path):
    """A LoRA for the test's tiny UNet: a rank-2 change of its output convolution."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    save_file({"lora_unet_out_2.lora_down.weight": (rng.standard_normal((2, 32, 3, 3)) * 0.5).astype(np.float32),
               "lora_unet_out_2.lora_up.weight": (rng.standard_normal((4, 2, 1, 1)) * 0.5).astype(np.float32),
               "lora_unet_out_2.alpha": np.array(2.0, np.float32)}, str(path))


def _fix_graph(folder, char_name=None, *, which="character", clip=False, prompt="", **kw):
    g = {"tm": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
         "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["tm", 1], "text": ""}},
         "fm": {"class_type": "ContinuityFaceModelLoader",
                "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
         "l": _load_folder(folder),
         "x": {"class_type": "ContinuityFaceFix",
               "inputs": {"face_model": ["fm", 0], "image": ["l", 0], "model": ["tm", 0], "negative": ["n", 0],
                          "vae": ["tm", 2], "which": which, "index": 0, "regions": "face, hair", "grow": 5.0,
                          "min_face": 16, "context": 1.5, "min_size": 32, "target_size": 64, "padding": "edge",
                          "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                          "denoise_1": 1.0, "denoise_2": 0.4, "feather": 4.5, "colour_match": False}},
         "o": {"class_type": "PreviewImage", "inputs": {"images": ["x", 0]}}}
    if clip:
        g["x"]["inputs"].update(clip=["tm", 1], prompt=prompt)
    else:
        g["p"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["tm", 1], "text": prompt or "a face"}}
        g["x"]["inputs"]["positive"] = ["p", 0]
    if char_name:
        g["c"] = {"class_type": "ContinuityLoadCharacter", "inputs": {"name": char_name, "revision": 0}}
        g["x"]["inputs"]["character"] = ["c", 0]
    g["x"]["inputs"].update(kw)
    return g


@pytest.fixture(scope="module")
def fix_character(comfy, faces_dir):
    """A character with a trigger word, a class phrase and a LoRA in the loras folder; composites."""
    root = _chars_root(comfy.base)
    _profile(root, "charmask_fix", faces_dir, trigger_word="p4t", class_phrase="woman")
    loras = comfy.base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    _tiny_lora(loras / "charmask_fix_s1.safetensors")
    record_lora(str(root), "charmask_fix", lora_name="charmask_fix_s1.safetensors", stage=1)
    folder, seams = _write_composites(comfy.base, "charmask_fix_imgs", faces_dir, *PAIRS[1])
    return folder, seams


@pytest.mark.comfy
@needs_mediapipe
def test_face_fix_fixes_only_the_characters_face_with_its_lora(comfy, fix_character):
    folder, seams = fix_character
    # random-weight models paint noise: the identity guard would undo it, so it is off here (tested below)
    res = comfy.run(_fix_graph(folder, "charmask_fix", keep_only_if_better=False))
    out, mask, count, report = (res.value("x", i) for i in range(4))
    assert count == 2                                        # one face per image: the character's
    _assert_on_character(mask.numpy(), seams)
    assert "character 'charmask_fix' (revision 2): LoRA charmask_fix_s1.safetensors at 0.8" in report
    assert "image 0: character 'charmask_fix' is face" in report and "image 1: character 'charmask_fix'" in report
    assert "similarity" in report and "faces fixed: 2" in report
    assert "positive: the connected conditioning, as given" in report
    assert res.ui["x"]["continuity_text"] == [report]
    # the LoRA changes the result; strength 0 is the plain model
    off = comfy.run(_fix_graph(folder, "charmask_fix", lora_strength=0.0, keep_only_if_better=False))
    assert "LoRA off (strength 0)" in off.value("x", 3)
    assert not bool((off.value("x", 0) - out).abs().max() == 0)
    assert bool((off.value("x", 1) == mask).all())           # the same faces were chosen


@pytest.mark.comfy
@needs_mediapipe
def test_face_fix_prompt_gets_the_trigger_word_once(comfy, fix_character):
    folder, _ = fix_character
    res = comfy.run(_fix_graph(folder, "charmask_fix", clip=True, prompt="detailed face", lora_strength=0.0,
                               keep_only_if_better=False))
    report = res.value("x", 3)
    assert 'prompt: "p4t woman, detailed face" (the character\'s trigger word and class phrase put first)' in report
    # the same as encoding the full prompt outside and connecting it as positive
    outside = comfy.run(_fix_graph(folder, "charmask_fix", prompt="p4t woman, detailed face", lora_strength=0.0,
                                   keep_only_if_better=False))
    assert float((res.value("x", 0) - outside.value("x", 0)).abs().max()) == 0.0
    named = comfy.run(_fix_graph(folder, "charmask_fix", clip=True, prompt="photo of P4T, smiling",
                                 lora_strength=0.0)).value("x", 3)
    assert 'prompt: "photo of P4T, smiling" (as written: it names the character already)' in named
    with_lora = comfy.run(_fix_graph(folder, "charmask_fix", clip=True, prompt="detailed face")).value("x", 3)
    assert "LoRA charmask_fix_s1.safetensors at 0.8" in with_lora


@pytest.mark.comfy
@needs_mediapipe
def test_face_fix_character_errors_name_node_and_input(comfy, fix_character):
    folder, _ = fix_character
    no_positive = _fix_graph(folder, "charmask_fix")
    del no_positive["x"]["inputs"]["positive"]
    text_without_clip = _fix_graph(folder, "charmask_fix", which="all")
    text_without_clip["x"]["inputs"]["prompt"] = "text without clip"
    cases = [
        (_fix_graph(folder), "input 'character': which is 'character' but no character is connected"),
        (_fix_graph(folder, "charmask_fix", clip=True, positive=["n", 0]), "input 'positive': connect either positive"),
        (no_positive, "input 'positive': connect positive conditioning, or clip"),
        (text_without_clip, "input 'clip': the prompt text needs clip"),
    ]
    for graph, expected in cases:
        res = comfy.run(graph, expect_success=False)
        msg = res.error["exception_message"]
        assert "[Continuity] Face Fix (Continuity), " + expected in msg, msg


@pytest.mark.comfy
@needs_mediapipe
def test_face_fix_without_a_match_passes_the_image_through(comfy, faces_dir, fix_character):
    folder, _ = fix_character
    _profile(_chars_root(comfy.base), "charmask_fix_far", faces_dir, refs=FAR_REFS)
    res = comfy.run(_fix_graph(folder, "charmask_fix_far"))
    src = np.stack([np.asarray(Image.open(comfy.base / "input" / folder / f)).astype(np.float32) / 255
                    for f in ("a_left.png", "b_right.png")])
    assert res.value("x", 2) == 0 and float(res.value("x", 1).max()) == 0.0
    assert np.array_equal(res.value("x", 0).numpy(), src)
    assert "no face matches character 'charmask_fix_far'" in res.value("x", 3)
    assert "passed through unchanged" in res.value("x", 3)


@pytest.mark.comfy
@needs_mediapipe
def test_face_fix_keeps_the_original_where_the_fix_lowers_the_identity(comfy, fix_character):
    """The identity guard: random-weight models paint noise over the face, which scores lower (or
    loses the face); the original image comes back, and the report gives both similarities."""
    folder, _ = fix_character
    src = np.stack([np.asarray(Image.open(comfy.base / "input" / folder / f)).astype(np.float32) / 255
                    for f in ("a_left.png", "b_right.png")])
    res = comfy.run(_fix_graph(folder, "charmask_fix"))           # keep_only_if_better defaults to on
    out, mask, count, report = (res.value("x", i) for i in range(4))
    assert count == 0 and float(mask.max()) == 0.0
    assert np.array_equal(out.numpy(), src)
    for i in (0, 1):
        line = next(ln for ln in report.splitlines() if ln.startswith(f"image {i}: similarity"))
        assert "before the fix" in line and line.endswith("original kept (keep_only_if_better)"), line
    assert "faces fixed: 0" in report
    # off: the fix stays and the report says it scored lower
    kept = comfy.run(_fix_graph(folder, "charmask_fix", keep_only_if_better=False)).value("x", 3)
    assert "faces fixed: 2" in kept and "after" in kept


# ----------------------------------------------------------------------------- live server

@pytest.mark.server
@needs_mediapipe
def test_character_picks_the_face_in_the_live_server(server, faces_dir):
    _profile(_chars_root(server.base), "charmask_live", faces_dir, trigger_word="l1v", class_phrase="woman")
    folder, seams = _write_composites(server.base, "charmask_live_imgs", faces_dir, *PAIRS[0])
    g = _mask_graph(folder, "charmask_live")           # Load Character -> Face Region Mask, and Face Fix
    g["mi"] = {"class_type": "MaskToImage", "inputs": {"mask": ["m", 0]}}
    g["ms"] = {"class_type": "SaveImage", "inputs": {"images": ["mi", 0], "filename_prefix": "charmask_live/mask"}}
    fix = _fix_graph(folder, "charmask_live", clip=True, prompt="detailed face", keep_only_if_better=False)
    g.update({k: fix[k] for k in ("tm", "n", "x")})
    g["fo"] = {"class_type": "SaveImage", "inputs": {"images": ["x", 0], "filename_prefix": "charmask_live/fix"}}
    g["r"] = {"class_type": "PreviewAny", "inputs": {"source": ["x", 3]}}
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success"
    masks = [np.asarray(Image.open(server.base / "output" / it["subfolder"] / it["filename"]).convert("L"))
             for it in entry["outputs"]["ms"]["images"]]
    _assert_on_character(np.stack(masks).astype(np.float32) / 255, seams)
    shown = json.dumps(entry["outputs"])
    assert "character 'charmask_live' is face" in shown
    assert "l1v woman, detailed face" in shown and "faces fixed: 2" in shown
