"""Identity scoring core: embedders, similarity, calibration (no ComfyUI)."""
import numpy as np
import pytest
from PIL import Image

from continuity.errors import ContinuityError, MissingModelError
from continuity.faces import embedders
from continuity.faces.embedders import get_embedder
from continuity.scoring import calibration, similarity
from continuity.scoring.cache import EmbeddingCache, content_hash


def _load(path, max_side=None):
    img = Image.open(path).convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    return np.asarray(img)


@pytest.fixture(scope="module")
def dlib_model():
    return get_embedder("dlib")


def test_pairs_auc_and_accuracy_at_documented_threshold(faces_dir, dlib_model):
    res = calibration.evaluate_pairs(str(faces_dir / "pairs.csv"), dlib_model)
    print(f"\npairs: AUC={res['roc_auc']:.4f} accuracy@{res['threshold']}={res['accuracy']:.4f} "
          f"same={res['same_mean']:.3f} different={res['different_mean']:.3f}")
    assert res["pairs"] == 300 and res["scored"] == 300 and res["no_face"] == []
    assert res["threshold"] == embedders.MODELS["dlib"]["threshold"] == 0.93
    assert res["roc_auc"] >= 0.99
    assert res["accuracy"] >= 0.97
    # raw cosine of dlib embeddings is high even for different people: reported, not hidden
    assert 0.7 < res["different_mean"] < res["same_mean"]


def test_roc_auc_matches_definition():
    rng = np.random.default_rng(1)
    s = rng.random(40)
    y = rng.random(40) > 0.5
    pairs = [(a, b) for a in s[y] for b in s[~y]]
    expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert calibration.roc_auc(s, y) == pytest.approx(expected)
    assert calibration.roc_auc([0.1, 0.9], [False, True]) == 1.0
    with pytest.raises(ValueError):
        calibration.roc_auc([0.1, 0.2], [True, True])


def test_embedder_is_cached_and_normalised(dlib_model, faces_dir):
    assert get_embedder("dlib") is dlib_model
    assert get_embedder(" DLIB ") is dlib_model
    rgb = _load(faces_dir / "img12.jpg")
    det = similarity.get_face_detector()
    faces = det.detect(rgb)
    assert len(faces) == 1
    v = dlib_model.embed(rgb, faces)
    assert v.shape == (1, 128) and v.dtype == np.float32
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ContinuityError, match="unknown identity model"):
        get_embedder("vgg-nope")


def test_missing_weights_say_what_and_where(tmp_path):
    with pytest.raises(MissingModelError) as e:
        get_embedder("arcface", models_dir=str(tmp_path))
    msg = str(e.value)
    assert "w600k_r50.onnx" in msg and str(tmp_path / "insightface") in msg
    for name, fname in embedders.DEEPFACE_FILES.items():
        with pytest.raises(MissingModelError) as e:
            get_embedder(name, models_dir=str(tmp_path))
        assert fname in str(e.value) and str(tmp_path / "deepface") in str(e.value)
    av = {a.name: a for a in embedders.availability(str(tmp_path))}
    assert av["dlib"].available and not av["arcface"].available and not av["facenet"].available
    assert "insightface" in av["arcface"].reason


def test_score_set_flags_missing_face_and_uses_cache(dlib_model, faces_dir):
    refs = [_load(faces_dir / n, 800) for n in ("img1.jpg", "img2.jpg", "img4.jpg")]
    cands = [_load(faces_dir / "img5.jpg", 800), _load(faces_dir / "img3.jpg", 800),
             np.full((200, 300, 3), 128, np.uint8)]  # grey image: no face
    cache = EmbeddingCache()
    calls = {"n": 0}

    class Counting:
        name, dim, threshold, model_path = "dlib", 128, dlib_model.threshold, "x"

        def chips(self, rgb, faces):
            return dlib_model.chips(rgb, faces)

        def embed_chips(self, chips):
            calls["n"] += len(chips)
            return dlib_model.embed_chips(chips)

    # the same picture twice in one call is embedded once; batches of 2 give the same vectors
    twice = similarity.embed_images([refs[0], refs[0].copy(), refs[1]], Counting(), cache=EmbeddingCache(), batch_size=2)
    assert calls["n"] == 2 and twice[0] is twice[1] and twice[2].embedding is not None
    calls["n"] = 0
    s = similarity.score_set(refs, cands, [Counting()], name="A", cache=cache,
                             filenames=["img5.jpg", "img3.jpg", "grey.png"])
    ms = s.models["dlib"]
    assert calls["n"] == 5                              # 3 refs + 2 candidates with a face
    assert ms.mean[0] > ms.threshold                     # same person as the references
    assert ms.mean[1] < ms.threshold                     # someone else
    assert ms.mean[2] is None and ms.max[2] is None      # no face: no number
    assert not ms.candidates[2].found and "no face" in ms.candidates[2].note
    assert ms.verdicts() == [True, False, None]
    assert ms.baseline is not None and ms.baseline > ms.threshold
    assert ms.calibrated(ms.baseline) == pytest.approx(1.0)
    assert ms.calibrated(ms.threshold) == pytest.approx(0.0)
    summ = s.summary()[0]
    assert summ["count"] == 3 and summ["scored"] == 2 and summ["faces_missing"] == 1
    assert summ["mean"] == pytest.approx(np.mean([ms.mean[0], ms.mean[1]]))
    d = s.to_dict()
    assert d["models"]["dlib"]["candidates"][2]["mean"] is None
    assert d["models"]["dlib"]["candidates"][0]["file"] == "img5.jpg"
    # second run: nothing embedded again (same content), even with copies of the arrays
    s2 = similarity.score_set([r.copy() for r in refs], [c.copy() for c in cands], [Counting()], cache=cache)
    assert calls["n"] == 5
    assert np.allclose(s2.models["dlib"].sims[:2], ms.sims[:2])


def test_reference_without_face_is_an_error_naming_it(dlib_model, faces_dir):
    refs = [_load(faces_dir / "img1.jpg", 600), np.zeros((100, 100, 3), np.uint8)]
    with pytest.raises(ContinuityError) as e:
        similarity.score_set(refs, [refs[0]], [dlib_model], reference_names=["a.png", "black.png"])
    assert "black.png" in str(e.value) and e.value.input == "references"


def test_face_policies(faces_dir, dlib_model):
    couple = _load(faces_dir / "couple.jpg", 1200)
    faces = similarity.get_face_detector().detect(couple)
    assert len(faces) >= 2
    assert similarity.pick_face(faces, "largest")[0] == int(np.argmax([f.area for f in faces]))
    idx, note = similarity.pick_face(faces, "only_one")
    assert idx is None and "faces found" in note
    # the mask selects the other face
    other = min(range(len(faces)), key=lambda i: faces[i].area)
    mask = np.zeros(couple.shape[:2], np.float32)
    x0, y0, x1, y1 = (int(v) for v in faces[other].box)
    mask[y0:y1, x0:x1] = 1
    assert similarity.pick_face(faces, "in_mask", mask) == (other, "")
    empty = np.zeros_like(mask)
    empty[:5, :5] = 1
    assert similarity.pick_face(faces, "in_mask", empty)[0] is None
    res = similarity.embed_images([couple], dlib_model, policy="in_mask", masks=[mask], cache=EmbeddingCache())
    assert res[0].face_index == other
    with pytest.raises(ContinuityError):
        similarity.embed_images([couple], dlib_model, policy="in_mask", masks=[mask[:10]])
    # with another policy a mask (even of another size, like LoadImage's 64x64 default) is ignored
    res = similarity.embed_images([couple], dlib_model, policy="largest", masks=[mask[:64, :64]], cache=EmbeddingCache())
    assert res[0].face_index == similarity.pick_face(faces, "largest")[0]


def test_content_hash_and_input_kinds():
    a = np.zeros((4, 4, 3), np.uint8)
    assert content_hash(a) == content_hash(a.copy())
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_hash(a) != content_hash(b)
    assert content_hash(a.astype(np.float32)) != content_hash(a)
    c = EmbeddingCache(max_items=2)
    for k in range(3):
        c.put(k, k)
    assert len(c) == 2 and c.get(0) is None and c.get(2) == 2


def test_arcface_alignment_and_input_without_onnx(faces_dir):
    import cv2

    from continuity.faces.base import Face
    rgb = _load(faces_dir / "img12.jpg")
    face = similarity.get_face_detector().detect(rgb)[0]
    pts = embedders.five_points(rgb, face)
    # the same points from the face box alone (the 68-point predictor runs) agree
    bare = Face(box=face.box, score=1.0)
    assert np.abs(embedders.five_points(rgb, bare) - pts).max() < 3.0
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]          # image-left eye / mouth corner first
    m, _ = cv2.estimateAffinePartial2D(pts, embedders.ARCFACE_TEMPLATE, method=cv2.LMEDS)
    mapped = pts @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - embedders.ARCFACE_TEMPLATE).max() < 6.0   # landmarks land on the template
    crop = embedders.align_crop(rgb, pts, (112, 112))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and crop.std() > 20

    fed = {}

    class FakeSession:            # stands in for onnxruntime: records what ArcFace is fed
        def run(self, _, feeds):
            fed.update(feeds)
            x = feeds["input.1"]
            return [x.reshape(x.shape[0], -1)[:, :512].copy()]

    arc = object.__new__(embedders.ArcFaceONNX)
    arc._sess, arc._input, arc.size, arc.dim, arc._models_dir = FakeSession(), "input.1", (112, 112), 512, None
    v = arc.embed(rgb, [face, face])
    x = fed["input.1"]
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0                          # (rgb - 127.5) / 127.5
    assert np.allclose(x[0].transpose(1, 2, 0), (crop.astype(np.float32) - 127.5) / 127.5)
    assert v.shape == (2, 512) and np.allclose(np.linalg.norm(v, axis=1), 1.0)


def test_odd_inputs_never_crash(faces_dir, dlib_model):
    """Grey, RGBA, float, tiny and border-cut images: a score or a clear 'no face', never an exception."""
    rgb = _load(faces_dir / "img12.jpg")
    face = similarity.get_face_detector().detect(rgb)[0]
    x0 = int(face.box[0] + face.width * 0.3)
    cut = rgb[:, x0:]                                      # the face runs off the left border
    grey = rgb.mean(axis=2).astype(np.uint8)               # (H, W)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]).astype(np.float32) / 255.0
    tiny = np.zeros((1, 1, 3), np.float32)
    res = similarity.embed_images([cut, grey, rgba, tiny], dlib_model, cache=EmbeddingCache())
    assert res[3].found is False and res[3].embedding is None
    assert res[1].found and res[2].found                  # grey and RGBA float images work
    full = similarity.embed_images([rgb], dlib_model, cache=EmbeddingCache())[0].embedding
    assert float(res[2].embedding @ full) > 0.99          # RGBA float = the same picture
    assert float(res[1].embedding @ full) > 0.9           # grey: same person
    if res[0].found:                                       # a half face, if found, is clamped and aligned
        assert res[0].embedding.shape == (128,) and np.isfinite(res[0].embedding).all()


def test_roc_auc_properties():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.floats(-1, 1, allow_nan=False), st.booleans()), min_size=2, max_size=40))
    def check(pairs):
        s = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        if y.all() or (~y).all():
            return
        auc = calibration.roc_auc(s, y)
        assert 0.0 <= auc <= 1.0
        assert calibration.roc_auc(4 * s, y) == pytest.approx(auc)      # only the order matters
        assert calibration.roc_auc(-s, y) == pytest.approx(1.0 - auc)
        assert calibration.accuracy_at(s, y, 2.0) == pytest.approx((~y).mean())  # nothing passes

    check()


def test_arcface_through_onnxruntime_with_random_weights(tmp_path, faces_dir):
    """The real onnxruntime path with a small random-weight ArcFace stand-in (same input/output contract)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 14 * 14, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "w"], ["683"])],
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder = tmp_path / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "w600k_r50.onnx"))

    av = {a.name: a for a in embedders.availability(str(tmp_path))}
    assert av["arcface"].available and av["arcface"].reason.endswith("w600k_r50.onnx")
    arc = get_embedder("arcface", models_dir=str(tmp_path))
    assert get_embedder("arcface", models_dir=str(tmp_path)) is arc
    assert arc.dim == 512 and arc.threshold == 0.32 and arc.size == (112, 112)
    imgs = [_load(faces_dir / n, 640) for n in ("img12.jpg", "img3.jpg")]
    res = similarity.embed_images(imgs, arc, cache=EmbeddingCache())       # one batch of two chips
    assert all(r.found for r in res)
    det = similarity.get_face_detector()
    for img, r in zip(imgs, res):
        face = det.detect(img)[0]
        crop = embedders.align_crop(img, embedders.five_points(img, face), (112, 112)).astype(np.float32)
        x = ((crop - 127.5) / 127.5).transpose(2, 0, 1)
        pooled = x.reshape(3, 14, 8, 14, 8).mean(axis=(2, 4)).reshape(-1)
        ref = pooled @ w
        assert np.allclose(r.embedding, ref / np.linalg.norm(ref), atol=1e-4)


def test_deepface_models_preprocessing_without_tensorflow(faces_dir):
    """Facenet/OpenFace/DeepID crops and inputs as DeepFace feeds them (the Keras model is faked)."""
    rgb = _load(faces_dir / "img12.jpg")
    face = similarity.get_face_detector().detect(rgb)[0]
    seen = {}

    class FakeKeras:
        def __call__(self, x, training=False):
            seen["x"] = x
            return x.reshape(x.shape[0], -1)[:, :160] + 0.01

    for name, (w, h) in embedders.DEEPFACE_INPUT.items():
        m = object.__new__(embedders.DeepFaceKeras)
        m.name, m.dim, m.threshold, m._models_dir = name, embedders.MODELS[name]["dim"], 0.5, None
        m._model = type("Client", (), {"model": FakeKeras()})()      # newer deepface: client.model
        v = m.embed(rgb, [face])
        x = seen["x"]
        assert x.shape == (1, h, w, 3) and x.min() >= 0.0 and x.max() <= 1.0
        crop = embedders.deepface_crop(rgb, face, (w, h))
        assert np.allclose(x[0], crop[..., ::-1] / 255.0)             # BGR in [0, 1]
        assert v.shape[0] == 1 and np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)
    # the crop keeps the face's aspect ratio: black bars, the face centred
    crop = embedders.deepface_crop(rgb, face, (47, 55))
    assert crop.shape == (55, 47, 3) and crop[crop.shape[0] // 2, crop.shape[1] // 2].sum() > 0


def test_cache_is_per_detector(faces_dir, dlib_model):
    rgb = _load(faces_dir / "img12.jpg")
    cache = EmbeddingCache()
    real = similarity.get_face_detector()
    a = similarity.embed_images([rgb], dlib_model, detector=real, cache=cache)[0]

    class NoFace:
        name = "dlib"                       # same name, another detector: must not share entries

        def detect(self, img):
            return []

    b = similarity.embed_images([rgb], dlib_model, detector=NoFace(), cache=cache)[0]
    assert a.found and not b.found
    again = similarity.embed_images([rgb.copy()], dlib_model, detector=real, cache=cache)[0]
    assert again is a                        # same content, same detector: the cached result
