"""The trusted store: schema parsing, confinement, signatures, atomic and concurrent writes, text checks."""
from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from continuity import store
from continuity.errors import ContinuityError
from continuity.store import files as store_files
from continuity.store import keys


@pytest.fixture(autouse=True)
def key_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user" / "__continuity"
    monkeypatch.delenv("CONTINUITY_KEY_DIR", raising=False)
    store.configure(str(folder))
    keys._cache.clear()
    yield folder
    store.configure(None)
    keys._cache.clear()


ITEM = store.Obj({"file": store.RelPath(), "caption": store.Field(store.Str(max_len=100, multiline=True), required=False,
                                                                   default=""),
                  "n": store.Int(min=0, max=10)})


# --------------------------------------------------------------------------- text

@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "a\x00b", "bell\x07", "esc\x1b[31m", "x" * 201, "line\u2028sep"])
def test_check_line_refuses_invalid_text_and_message_is_ascii(bad):
    with pytest.raises(ContinuityError) as err:
        store.check_line(bad, input="name")
    assert err.value.input == "name"
    str(err.value).encode("ascii")          # never carries the raw value
    assert bad not in str(err.value) or bad.isascii()


def test_check_text_allows_newlines_and_unicode():
    assert store.check_text("Zoë 👩‍🎤\nsecond line\tx", input="note") == "Zoë 👩‍🎤\nsecond line\tx"
    with pytest.raises(ContinuityError):
        store.check_line("two\nlines", input="name")


def test_shown_and_printable_never_raise():
    assert store.shown("\ud800" * 3) == "'\\ud800\\ud800\\ud800'"
    assert store.printable("a\ud800") == "a\\ud800"
    err = ContinuityError("bad name '\ud800'", input="name")
    str(err).encode("utf-8")


# --------------------------------------------------------------------------- schema

def test_schema_refuses_unknown_missing_and_ill_typed_fields():
    assert store.check({"file": "a/b.png", "n": 3}, ITEM, what="item", input="x") == {"file": "a/b.png", "caption": "",
                                                                                         "n": 3}
    for bad, why in [({"file": "a.png", "n": 3, "argv": ["sh"]}, "unknown field"),
                     ({"n": 3}, "missing"),
                     ({"file": "a.png", "n": "3"}, "integer"),
                     ({"file": "a.png", "n": True}, "integer"),
                     ({"file": "a.png", "n": 11}, "outside"),
                     ({"file": ["a.png"], "n": 1}, "text"),
                     ({"file": "a.png", "n": 1, "caption": "\ud800"}, "surrogate")]:
        with pytest.raises(store.StoreError, match=why) as err:
            store.check(bad, ITEM, what="item", input="x")
        assert err.value.input == "x"


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.png", "a/../../x", "a\\..\\x", "C:/x", "", ".hidden",
                                  "a//b", "a/./b", "a\x00b", "x\n"])
def test_relpath_refuses_anything_but_a_plain_relative_path(path):
    with pytest.raises(store.StoreError):
        store.check(path, store.RelPath(), what="file", input="x")


def test_load_json_bounds_size_depth_constants_and_duplicates():
    with pytest.raises(store.StoreError, match="bytes"):
        store.load_json(b"[" + b"1," * 100 + b"1]", what="f", input="x", max_bytes=50)
    with pytest.raises(store.StoreError, match="nested"):
        store.load_json(b"[" * 100000 + b"]" * 100000, what="f", input="x", max_bytes=10**6)
    with pytest.raises(store.StoreError, match="nested"):
        store.load_json(b"[" * 40 + b"]" * 40, what="f", input="x")
    with pytest.raises(store.StoreError, match="JSON"):
        store.load_json(b'{"a": NaN}', what="f", input="x")
    with pytest.raises(store.StoreError, match="too large"):
        store.load_json(b'{"a": 1e999}', what="f", input="x")
    with pytest.raises(store.StoreError, match="JSON"):
        store.load_json(b'{"a": 1, "a": 2}', what="f", input="x")
    with pytest.raises(store.StoreError, match="JSON"):
        store.load_json(b'\xff\xfe', what="f", input="x")


# --------------------------------------------------------------------------- confinement

def test_resolve_confines_files_and_folders_with_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_text("ok")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "link.txt").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    (root / "inner.txt").symlink_to(root / "sub" / "ok.txt")
    assert store.resolve(str(root), "sub/ok.txt", input="x") == os.path.realpath(root / "sub" / "ok.txt")
    assert store.resolve(str(root), "inner.txt", input="x").endswith("ok.txt")
    for rel in ["link.txt", "dirlink/secret.txt", "../secret.txt", str(outside), "sub/../../secret.txt"]:
        with pytest.raises(store.StoreError) as err:
            store.resolve(str(root), rel, input="mask_file")
        assert str(tmp_path) not in str(err.value), "messages must not leak server paths"
    with pytest.raises(store.StoreError):
        store.resolve(str(root), "dirlink", input="x", kind="dir")


def test_read_bytes_is_bounded(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 1000)
    assert store.read_bytes(str(tmp_path), "big", input="x", max_bytes=1000) == b"x" * 1000
    with pytest.raises(store.StoreError, match="at most 999"):
        store.read_bytes(str(tmp_path), "big", input="x", max_bytes=999)


def test_list_files_refuses_links_out_of_the_roots(tmp_path):
    root = tmp_path / "input"
    folder = root / "set"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"a")
    (folder / "sub" / "b.png").write_bytes(b"b")
    (root / "shared.png").write_bytes(b"s")
    (folder / "c.png").symlink_to(root / "shared.png")
    assert store.list_files(str(folder), [str(root)], input="folder", recursive=True) == ["a.png", "c.png", "sub/b.png"] or \
        sorted(store.list_files(str(folder), [str(root)], input="folder", recursive=True)) == ["a.png", "c.png", "sub/b.png"]
    (tmp_path / "passwd.png").write_bytes(b"p")
    (folder / "sub" / "evil.png").symlink_to(tmp_path / "passwd.png")
    assert sorted(store.list_files(str(folder), [str(root)], input="folder")) == ["a.png", "c.png"]
    with pytest.raises(store.StoreError, match="evil.png"):
        store.list_files(str(folder), [str(root)], input="folder", recursive=True)
    (folder / "sub" / "evil.png").unlink()
    (folder / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(store.StoreError, match="out"):
        store.list_files(str(folder), [str(root)], input="folder", recursive=True)


# --------------------------------------------------------------------------- signatures

def test_secret_is_created_0600_once(key_dir):
    k1 = keys.secret()
    path = key_dir / keys.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys._cache.clear()
    assert keys.secret() == k1 and len(k1) == 32


def test_signed_json_round_trip_and_refusals(tmp_path):
    doc = {"file": "a.png", "n": 3, "caption": "Zoë"}
    store.write_json(str(tmp_path / "m.json"), doc, kind="test", context="ds")
    assert store.read_json(str(tmp_path), "m.json", ITEM, kind="test", context="ds", input="x") == doc
    # another kind or context: a signed file cannot stand in for another
    with pytest.raises(store.StoreError, match="signature"):
        store.read_json(str(tmp_path), "m.json", ITEM, kind="job", context="ds", input="x")
    with pytest.raises(store.StoreError, match="signature"):
        store.read_json(str(tmp_path), "m.json", ITEM, kind="test", context="other", input="x")
    # tampered
    raw = json.loads((tmp_path / "m.json").read_text())
    raw["n"] = 4
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(store.StoreError, match="changed or not written"):
        store.read_json(str(tmp_path), "m.json", ITEM, kind="test", context="ds", input="x")
    # never signed
    (tmp_path / "u.json").write_text(json.dumps(doc))
    with pytest.raises(store.StoreError, match="no signature") as err:
        store.read_json(str(tmp_path), "u.json", ITEM, kind="test", input="version")
    assert err.value.input == "version"
    # signed by another server (another secret)
    keys._cache.clear()
    store.configure(str(tmp_path / "other-server"))
    with pytest.raises(store.StoreError, match="signature"):
        store.read_json(str(tmp_path), "m.json", None, kind="test", context="ds", input="x")


def test_signed_but_ill_typed_is_still_refused(tmp_path):
    store.write_json(str(tmp_path / "m.json"), {"file": "../../etc/passwd", "n": 1}, kind="test")
    with pytest.raises(store.StoreError, match="relative path"):
        store.read_json(str(tmp_path), "m.json", ITEM, kind="test", input="x")


def test_write_json_exclusive(tmp_path):
    store.write_json_exclusive(str(tmp_path / "r.json"), {"a": 1}, kind="t")
    with pytest.raises(FileExistsError):
        store.write_json_exclusive(str(tmp_path / "r.json"), {"a": 2}, kind="t")
    assert store.read_json(str(tmp_path), "r.json", None, kind="t", input="x") == {"a": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name != "user"] == ["r.json"]


# --------------------------------------------------------------------------- versions

def test_new_version_folder_skips_taken_numbers(tmp_path):
    parent = tmp_path / "ds"

    def build(stage, n):
        with open(os.path.join(stage, "f.txt"), "w") as fh:
            fh.write(str(n))
    assert store.new_version_folder(str(parent), build)[0] == 1
    # another writer takes v2 while we build v2: our rename meets a non-empty folder -> v3
    def racing(stage, n):
        if n == 2 and not (parent / "v2").exists():
            (parent / "v2").mkdir()
            (parent / "v2" / "theirs.txt").write_text("theirs")
        build(stage, n)
    n, _ = store.new_version_folder(str(parent), racing)
    assert n == 3 and (parent / "v2" / "theirs.txt").read_text() == "theirs"
    assert not [p for p in parent.iterdir() if p.name.startswith(".")], "no partial folder left"


def test_new_version_folder_enotempty_is_taken(tmp_path, monkeypatch):
    import errno
    parent = tmp_path / "ds"
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        return real_rename(src, dst)
    monkeypatch.setattr(store_files.os, "rename", rename)
    n, _ = store.new_version_folder(str(parent), lambda stage, n: None)
    assert n == 2


def _save_versions(args):
    parent, key_dir, count = args
    store.configure(key_dir)
    got = []
    for _ in range(count):
        n, _ = store.new_version_folder(parent, lambda stage, n: store.write_json(
            os.path.join(stage, "manifest.json"), {"pid": os.getpid(), "n": n}, kind="t"))
        got.append(n)
    return got


def test_concurrent_writers_each_get_their_own_version(tmp_path, key_dir):
    parent = str(tmp_path / "ds")
    keys.secret()   # created once beforehand; creation races are covered by the exclusive link
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        results = pool.map(_save_versions, [(parent, str(key_dir), 5)] * 4)
    numbers = sorted(n for r in results for n in r)
    assert numbers == list(range(1, 21))
    for n in numbers:
        body = store.read_json(parent, f"v{n}/manifest.json", None, kind="t", input="x")
        assert body["n"] == n
