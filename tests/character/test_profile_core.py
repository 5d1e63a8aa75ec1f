"""Character profiles: the core store (append-only manifest, content-hashed files, embeddings)."""
import json
import os
import threading

import numpy as np
import pytest

from continuity import character as charlib
from continuity.errors import ContinuityError, PathError


def _img(seed, h=32, w=24):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _tree(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def test_create_load_update_never_overwrites(tmp_path):
    root = str(tmp_path)
    a = charlib.save_profile(root, "mara", trigger_word="mr4x", class_phrase="woman", style="realistic",
                             references=[_img(1), _img(2)], default_threshold=0.6, notes="lead")
    assert a.revision == 1 and len(a.references) == 2
    assert all(os.path.isfile(p) for p in a.reference_images())
    before = _tree(a.folder)

    b = charlib.save_profile(root, "mara", trigger_word="", class_phrase="young woman", references=[_img(3), _img(1)])
    assert b.revision == 2
    assert b.trigger_word == "mr4x"                  # empty keeps
    assert b.class_phrase == "young woman"
    assert len(b.references) == 3                     # _img(1) is deduplicated by content hash
    after = _tree(a.folder)
    # every file of revision 1 is still there, byte for byte
    for rel, data in before.items():
        assert after[rel] == data, rel
    # both revisions load
    assert charlib.load_profile(root, "mara", 1).class_phrase == "woman"
    assert charlib.load_profile(root, "mara").class_phrase == "young woman"
    hist = charlib.history(a.folder)
    assert [h["revision"] for h in hist] == [1, 2]
    assert [h["action"] for h in hist] == ["create", "update"]
    assert hist[1]["changes"]["class_phrase"] == "young woman"
    assert "trigger_word" not in hist[1]["changes"]
    assert charlib.list_profiles(root) == ["mara"]


def test_accessors(tmp_path):
    root = str(tmp_path)
    c = charlib.save_profile(root, "ivo", trigger_word="iv0", class_phrase="man", references=[_img(5)],
                             thresholds={"dlib": 0.9}, default_threshold=0.5)
    assert c.caption_prefix() == "iv0 man"
    assert c.prompt("smiling, close-up") == "iv0 man, smiling, close-up"
    assert c.threshold("dlib") == 0.9 and c.threshold("arcface") == 0.5
    assert c.latest_lora() is None and c.latest_dataset() is None
    imgs = c.load_reference_images()
    assert imgs[0].shape == (32, 24, 3) and abs(float(imgs[0].mean()) - float(_img(5).mean())) < 0.01

    c = charlib.record_dataset(root, "ivo", version=1, path="/x/ivo/v1")
    c = charlib.record_lora(root, "ivo", lora_name="ivo_s1.safetensors", stage=1, dataset_version=1)
    c = charlib.record_lora(root, "ivo", lora_name="ivo_s2.safetensors", stage=2, dataset_version=1,
                            report={"mean": 0.7})
    assert c.revision == 4
    assert c.latest_lora()["name"] == "ivo_s2.safetensors"
    assert c.latest_lora(stage=1)["name"] == "ivo_s1.safetensors"
    assert c.latest_lora(stage="2")["report"] == {"mean": 0.7}
    assert c.latest_dataset()["version"] == 1
    # the threshold without a default
    d = charlib.save_profile(root, "nodefault", references=[_img(6)])
    assert d.threshold("dlib") is None and d.threshold("dlib", 0.93) == 0.93


def test_mean_embedding_stored_per_model_and_revision(tmp_path):
    root = str(tmp_path)
    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 128)).astype(np.float32)
    c = charlib.save_profile(root, "eve", references=[_img(7)], embeddings={"dlib-resnet128": e})
    m = c.mean_embedding("dlib-resnet128")
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    want = en.mean(0) / np.linalg.norm(en.mean(0))
    assert m.dtype == np.float32 and np.allclose(m, want, atol=1e-6)
    assert c.embeddings["dlib-resnet128"]["count"] == 4
    assert c.mean_embedding("other") is None
    # a new embedding for the same model is a new file; the old revision still reads the old one
    c2 = charlib.save_profile(root, "eve", embeddings={"dlib-resnet128": e[:2]})
    assert c2.embeddings["dlib-resnet128"]["file"] != c.embeddings["dlib-resnet128"]["file"]
    assert np.allclose(charlib.load_profile(root, "eve", 1).mean_embedding("dlib-resnet128"), want, atol=1e-6)
    with pytest.raises(ContinuityError):
        charlib.save_profile(root, "eve", embeddings={"x": np.zeros((0, 128), np.float32)})


def test_bad_names_styles_and_missing_profiles(tmp_path):
    root = str(tmp_path)
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(PathError):
            charlib.save_profile(root, bad, references=[_img(1)])
    with pytest.raises(ContinuityError, match="style"):
        charlib.save_profile(root, "ok", style="cubist", references=[_img(1)])
    with pytest.raises(ContinuityError, match="no character profile 'ghost'"):
        charlib.load_profile(root, "ghost")
    charlib.save_profile(root, "ok", references=[_img(1)])
    with pytest.raises(ContinuityError, match="no revision 5"):
        charlib.load_profile(root, "ok", 5)
    with pytest.raises(ContinuityError, match="no character profile 'ghost' to update"):
        charlib.record_lora(root, "ghost", lora_name="x.safetensors")
    assert not os.path.exists(os.path.join(root, "ghost", "manifest"))


def test_concurrent_writers_get_distinct_revisions(tmp_path):
    root = str(tmp_path)
    charlib.save_profile(root, "crowd", references=[_img(1)])
    errors = []

    def worker(i):
        try:
            charlib.record_lora(root, "crowd", lora_name=f"l{i}.safetensors", stage=1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    c = charlib.load_profile(root, "crowd")
    assert c.revision == 9
    # no LoRA record was lost: each writer re-applied its change on top of the latest revision
    assert sorted(entry["name"] for entry in c.loras) == sorted(f"l{i}.safetensors" for i in range(8))
    revs = charlib.revisions(c.folder)
    assert revs == list(range(1, 10))
    for r in revs:
        with open(os.path.join(c.folder, "manifest", f"{r:06d}.json")) as fh:
            assert json.load(fh)["revision"] == r
