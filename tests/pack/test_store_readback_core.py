"""What the pack reads back (dataset versions, character profiles) is refused unless the pack wrote
it, it fits its schema and every path in it stays inside its folder: core checks, no ComfyUI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from continuity import character as charlib
from continuity import store
from continuity.dataset import versions as vs
from continuity.errors import ContinuityError


def _img(seed, h=24, w=20):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "datasets"
    items = [vs.Item(filename=f"img{i}", rgb=_img(i), caption=f"cap {i}",
                     mask=np.ones((24, 20), np.float32) if i == 0 else None) for i in range(2)]
    ver = vs.save_version(str(root), "hero", items, provenance={"step": "save"})
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return root, ver, secret


def _manifest(ver):
    return json.loads((open(os.path.join(ver.path, "manifest.json"), encoding="utf-8")).read())


def _resign(ver, doc):
    body = {k: v for k, v in doc.items() if k != "signature"}
    store.write_json(os.path.join(ver.path, "manifest.json"), body, kind=vs.KIND, context=f"{ver.name}/v{ver.number}")


def test_version_round_trip_reads_items(dataset):
    root, _ver, _ = dataset
    got = vs.read_items(vs.load_version(str(root), "hero", 1))
    assert [g.file for g in got] == ["img0.png", "img1.png"] and got[0].mask is not None and got[1].mask is None
    assert got[0].caption == "cap 0" and vs.load_version(str(root), "hero").provenance == {"step": "save"}


@pytest.mark.parametrize("field, value", [("file", "/etc/passwd"), ("file", "../../secret.txt"),
                                          ("mask_file", "../../../secret.txt"), ("mask_file", "/etc/hostname")])
def test_uploaded_manifest_with_outside_paths_is_refused(dataset, field, value):
    root, ver, secret = dataset
    doc = _manifest(ver)
    doc["items"][0][field] = value
    doc.pop("signature")
    with open(os.path.join(ver.path, "manifest.json"), "w") as fh:   # as /upload/image would write it
        json.dump(doc, fh)
    with pytest.raises(store.StoreError, match="no signature") as err:
        vs.load_version(str(root), "hero", 1, input="version")
    assert err.value.input == "version" and str(root) not in str(err.value)
    # even signed by the pack (a bug elsewhere, a stolen key), the schema refuses the path
    _resign(ver, {**doc})
    with pytest.raises(store.StoreError, match="relative") as err:
        vs.load_version(str(root), "hero", 1)
    assert str(secret) not in str(err.value)


def test_symlinked_files_and_swapped_content_are_refused(dataset):
    root, ver, secret = dataset
    img = os.path.join(ver.path, "img1.png")
    os.unlink(img)
    os.symlink(secret, img)
    loaded = vs.load_version(str(root), "hero", 1)
    with pytest.raises(store.StoreError, match="outside its folder") as err:
        vs.read_items(loaded)
    assert str(secret) not in str(err.value) and str(root) not in str(err.value)
    os.unlink(img)
    with open(img, "wb") as fh:
        fh.write(b"not the image that was saved")
    with pytest.raises(store.StoreError, match="changed after it was written"):
        vs.read_items(loaded)


def test_a_manifest_moved_to_another_version_or_name_is_refused(dataset, tmp_path):
    root, ver, _ = dataset
    v2 = vs.save_version(str(root), "hero", [vs.Item(filename="x", rgb=_img(9))])
    os.replace(os.path.join(ver.path, "manifest.json"), os.path.join(v2.path, "manifest.json"))
    with pytest.raises(store.StoreError, match="signature"):
        vs.load_version(str(root), "hero", 2)
    other = root / "villain" / "v1"
    other.mkdir(parents=True)
    with open(os.path.join(v2.path, "manifest.json"), "rb") as fh:
        (other / "manifest.json").write_bytes(fh.read())
    with pytest.raises(store.StoreError, match="signature"):
        vs.load_version(str(root), "villain", 1)


def test_version_folder_that_is_a_link_is_not_a_version(dataset, tmp_path):
    root, _, _ = dataset
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "hero" / "v7", target_is_directory=True)
    assert vs.versions_of(str(root), "hero") == [1]


def test_a_version_is_size_checked_from_its_manifest_before_decoding(dataset, monkeypatch):
    # merges add images run by run: loading a version grown past one load's bound is refused from the
    # signed sizes, before any image is decoded (the live-server twin would need GBs of images)
    root, ver, _ = dataset
    loaded = vs.load_version(str(root), "hero", 1)
    pixels = sum(r["width"] * r["height"] for r in loaded.items)
    assert len(vs.read_items(loaded, max_total_pixels=pixels)) == 2
    monkeypatch.setattr(vs, "load_image", lambda *a, **k: pytest.fail("decoded before the size check"))
    with pytest.raises(ContinuityError, match="loaded at once") as err:
        vs.read_items(loaded, max_total_pixels=pixels - 1)
    assert err.value.input == "version"


def test_merge_copies_only_confined_checked_files(dataset):
    root, _ver, _ = dataset
    base = vs.load_version(str(root), "hero", 1)
    new = vs.merge_fixed(str(root), base, [vs.Fix(target="img1.png", rgb=_img(5))])
    assert new.provenance["merged_from"] == "hero/v1" and [r["file"] for r in new.items] == ["img0.png", "img1.png"]
    assert vs.read_items(vs.load_version(str(root), "hero", new.number))[0].mask is not None
    with pytest.raises(ContinuityError, match="not a dataset version"):
        vs.from_value(str(root), {"name": "hero", "version": "1"})


def test_manifest_bombs_are_refused(dataset):
    root, ver, _ = dataset
    path = os.path.join(ver.path, "manifest.json")
    with open(path, "w") as fh:
        fh.write("[" * 200000 + "]" * 200000)
    with pytest.raises(store.StoreError, match="nested"):
        vs.load_version(str(root), "hero", 1)
    with open(path, "wb") as fh:
        fh.write(b" " * (9 * 1024 * 1024))
    with pytest.raises(store.StoreError, match="bytes"):
        vs.load_version(str(root), "hero", 1)


def test_invalid_text_is_refused_when_saving(tmp_path):
    for kw, inp in (({"note": "a\ud800"}, "note"), ({"note": "x" * 5000}, "note")):
        with pytest.raises(ContinuityError) as err:
            vs.save_version(str(tmp_path), "n", [vs.Item(filename="a", rgb=_img(1))], **kw)
        assert err.value.input == inp
        str(err.value).encode("ascii")
    with pytest.raises(ContinuityError) as err:
        vs.save_version(str(tmp_path), "n", [vs.Item(filename="a", rgb=_img(1), caption="bad\x1b[2J")])
    assert err.value.input == "captions"
    assert not os.path.exists(tmp_path / "n" / "v1")


# --------------------------------------------------------------------------- character profiles

@pytest.fixture
def profile(tmp_path):
    root = tmp_path / "characters"
    char = charlib.save_profile(str(root), "mara", trigger_word="mr4x", class_phrase="woman",
                                references=[_img(1), _img(2)],
                                embeddings={"dlib": np.random.default_rng(0).random((2, 8)).astype(np.float32)})
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    return root, char, secret


def _entry_path(char, rev=1):
    return os.path.join(char.folder, "manifest", f"{rev:06d}.json")


def test_profile_reads_back(profile):
    root, _char, _ = profile
    c = charlib.load_profile(str(root), "mara")
    assert len(c.reference_images()) == 2 and c.mean_embedding("dlib").shape == (8,)


@pytest.mark.parametrize("field, value", [("references", ["/etc/passwd"]), ("references", ["../../secret.png"]),
                                          ("style_references", ["references/../../secret.png"]),
                                          ("embeddings", {"dlib": {"file": "/etc/passwd", "count": 1, "dim": 8,
                                                                   "sha256": "0" * 64}}),
                                          ("notes", "\ud800"), ("style", "evil")])
def test_uploaded_profile_entries_are_refused(profile, field, value):
    root, char, _ = profile
    with open(_entry_path(char)) as fh:
        entry = json.load(fh)
    entry["profile"][field] = value
    entry.pop("signature")
    with open(_entry_path(char), "w") as fh:
        json.dump(entry, fh)
    with pytest.raises(store.StoreError, match="signature"):
        charlib.load_profile(str(root), "mara")
    if field == "notes":   # the writer itself refuses what cannot be stored
        with pytest.raises(store.StoreError, match="invalid character"):
            store.write_json(_entry_path(char), entry, kind=charlib.profile.ENTRY_KIND, context="mara/000001")
        return
    store.write_json(_entry_path(char), entry, kind=charlib.profile.ENTRY_KIND, context="mara/000001")
    with pytest.raises(store.StoreError) as err:
        charlib.load_profile(str(root), "mara")
    assert str(root) not in str(err.value)


def test_profile_files_swapped_or_linked_out_are_refused(profile):
    root, _char, secret = profile
    c = charlib.load_profile(str(root), "mara")
    ref = os.path.join(c.folder, c.references[0])
    os.unlink(ref)
    os.symlink(secret, ref)
    with pytest.raises(store.StoreError, match="outside"):
        c.reference_images()
    os.unlink(ref)
    with open(ref, "wb") as fh:
        fh.write(b"other bytes")
    with pytest.raises(store.StoreError, match="changed"):
        c.load_reference_images()
    emb = os.path.join(c.folder, c.embeddings["dlib"]["file"])
    with open(emb, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(store.StoreError, match="changed"):
        c.mean_embedding("dlib")


def test_profile_folder_linked_out_is_refused(profile, tmp_path):
    root, char, _ = profile
    elsewhere = tmp_path / "elsewhere"
    os.rename(char.folder, elsewhere)
    os.symlink(elsewhere, root / "mara", target_is_directory=True)
    with pytest.raises(store.StoreError, match="outside"):
        charlib.load_profile(str(root), "mara")


def test_a_dataset_value_is_read_again_not_trusted(dataset):
    """Merge Fixed Images gets a DATASET value from a link: it is only a name and a number to read again."""
    root, ver, secret = dataset
    value = vs.load_version(str(root), "hero", 1).as_dict()
    value["manifest"]["items"][0]["file"] = str(secret)          # what the value says does not matter
    assert vs.from_value(str(root), value).items[0]["file"] == "img0.png"
    doc = _manifest(ver)
    doc["items"][0]["mask_file"] = "../../../secret.txt"
    with open(os.path.join(ver.path, "manifest.json"), "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(store.StoreError, match="signature") as err:
        vs.from_value(str(root), value, input="dataset")
    assert err.value.input == "dataset"


def _save_three(args):
    root, n = args
    return [vs.save_version(root, "busy", [vs.Item(filename=f"p{n}_{k}", rgb=_img(n * 10 + k))],
                            note=f"writer {n}").number for k in range(3)]


def test_concurrent_writers_each_get_their_own_complete_version(tmp_path):
    """Two prompts or two servers on one base folder saving the same name: each gets its own version."""
    import multiprocessing
    root = str(tmp_path / "datasets")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        numbers = sorted(n for r in pool.map(_save_three, [(root, i) for i in range(4)]) for n in r)
    assert numbers == list(range(1, 13))
    notes = []
    for n in numbers:
        ver = vs.load_version(root, "busy", n)
        assert len(vs.read_items(ver)) == 1
        notes.append(ver.manifest["note"])
    assert sorted(notes) == sorted(f"writer {i}" for i in range(4) for _ in range(3))
    assert not [p for p in os.listdir(os.path.join(root, "busy")) if p.startswith(".")]


def test_names_with_invalid_text_are_refused_before_any_folder_is_made(tmp_path):
    for bad in ("\ud800", "a\x1bb", "tab\tname", "x" * 101):
        with pytest.raises(ContinuityError) as err:
            vs.save_version(str(tmp_path), bad, [vs.Item(filename="a", rgb=_img(1))])
        assert err.value.input == "name"
        str(err.value).encode("ascii")
    assert not os.listdir(tmp_path)
