"""Tier 1 (no ComfyUI): path confinement, atomic writes, versions, image folders."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from continuity import fsutil, imageio, store
from continuity.errors import ContinuityError, PathError
from continuity.paths import confine, safe_name


@pytest.fixture()
def roots(tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    (inp / "set").mkdir(parents=True)
    out.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    return str(inp), str(out), tmp_path


def test_confine_accepts_inside_and_refuses_outside(roots):
    inp, out, base = roots
    assert confine("set", [inp], kind="dir") == os.path.join(os.path.realpath(inp), "set")
    assert confine(os.path.join(out, "x.png"), [inp, out]) == os.path.join(os.path.realpath(out), "x.png")
    for bad in ["../secret.txt", "set/../../secret.txt", str(base / "secret.txt"), "/etc/passwd", "..", "set\x00x"]:
        with pytest.raises(PathError) as exc:
            confine(bad, [inp, out], input="folder")
        assert exc.value.input == "folder"


def test_confine_refuses_symlink_escape(roots):
    inp, _, base = roots
    os.symlink(base, os.path.join(inp, "escape"))
    with pytest.raises(PathError, match="outside"):
        confine("escape/secret.txt", [inp])


def test_confine_kinds(roots):
    inp, _, _ = roots
    with pytest.raises(PathError, match="does not exist"):
        confine("missing", [inp], kind="dir")
    open(os.path.join(inp, "f.txt"), "w").close()
    with pytest.raises(PathError, match="not a folder"):
        confine("f.txt", [inp], kind="dir")
    with pytest.raises(PathError, match="not a file"):
        confine("set", [inp], kind="file")


@pytest.mark.parametrize("name", ["", " ", "..", ".hidden", "a/b", "a\\b", "x:y", "a\nb", "x" * 101])
def test_safe_name_refuses(name):
    with pytest.raises(PathError):
        safe_name(name)


def test_safe_name_accepts():
    assert safe_name(" hero_v2.1 ") == "hero_v2.1"


def test_atomic_write_and_unique_path(tmp_path):
    p = tmp_path / "a" / "r.json"
    fsutil.atomic_write_json(str(p), {"x": 1})
    assert p.read_text().strip().startswith("{")
    assert not [f for f in os.listdir(p.parent) if f.startswith(".tmp-")]
    names = set()
    lock = threading.Lock()

    def grab():
        path = fsutil.unique_path(str(tmp_path / "reports"), "report", ".csv")
        with lock:
            names.add(path)

    threads = [threading.Thread(target=grab) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(names) == 16, "every writer got its own file"


def test_new_version_folder_never_overwrites(tmp_path):
    def build(content):
        def fill(stage, n):
            with open(os.path.join(stage, "data.txt"), "w") as fh:
                fh.write(content)
        return fill

    n1, p1 = store.new_version_folder(str(tmp_path), build("one"))
    n2, p2 = store.new_version_folder(str(tmp_path), build("two"))
    assert (n1, n2) == (1, 2)

    def failing(stage, n):
        open(os.path.join(stage, "half"), "w").close()
        raise RuntimeError("build failed")
    with pytest.raises(RuntimeError):
        store.new_version_folder(str(tmp_path), failing)
    assert not (tmp_path / "v3").exists()
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".partial")]
    assert open(os.path.join(p1, "data.txt")).read() == "one"
    assert open(os.path.join(p2, "data.txt")).read() == "two"


def test_image_modes_follow_comfyui_conventions(tmp_path):
    rgb = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    alpha = np.zeros((12, 10), np.uint8)
    alpha[6:] = 255
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "b.png")
    Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16)).save(tmp_path / "c.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "d.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "b.txt").write_text("  a grey one \n")
    items = imageio.load_folder(str(tmp_path))
    assert [i.name for i in items] == ["a.png", "b.png", "c.png", "d.png"]
    a, b, c, d = items
    assert a.rgb.shape == (12, 10, 3) and a.rgb.dtype == np.float32
    assert np.allclose(a.mask[:6], 1) and np.allclose(a.mask[6:], 0)
    assert np.allclose(a.rgb, rgb / 255.0, atol=1e-6)
    assert b.rgb.shape == (12, 10, 3) and np.allclose(b.rgb[..., 0], b.rgb[..., 2]) and b.caption == "a grey one"
    assert c.rgb.max() <= 1.0 and c.rgb.max() > 0.8, "16-bit scaled to [0, 1]"
    assert d.rgb.shape == (12, 10, 3)


def test_natural_order_and_paging(tmp_path):
    for n in [10, 2, 1]:
        Image.new("RGB", (4, 4)).save(tmp_path / f"img{n}.png")
    assert imageio.list_images(str(tmp_path)) == ["img1.png", "img2.png", "img10.png"]
    assert [i.name for i in imageio.load_folder(str(tmp_path), start=1, limit=1)] == ["img2.png"]


def test_unreadable_image_is_a_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ContinuityError, match="broken.png"):
        imageio.load_folder(str(tmp_path))
