"""Tier 2: the pack inside ComfyUI, in this process, graphs through ComfyUI's executor."""
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfy


def test_pack_registers_through_v3_entry_point(comfy):
    import nodes
    assert not hasattr(comfy.pack_module, "NODE_CLASS_MAPPINGS"), "exporting it hides the V3 entry point"
    assert callable(comfy.pack_module.comfy_entrypoint)
    cls = nodes.NODE_CLASS_MAPPINGS["ContinuityLoadImageFolder"]
    from comfy_api.latest import io
    assert issubclass(cls, io.ComfyNode)
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["ContinuityLoadImageFolder"] == "Load Image Folder (Continuity)"
    # the web folder is served
    assert any(p.endswith("web") for p in nodes.EXTENSION_WEB_DIRS.values())


def _make_folder(comfy, name, sizes, rgba_index=None):
    folder = comfy.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        if i == rgba_index:
            alpha = np.full((h, w), 255, np.uint8)
            alpha[: h // 2] = 0
            Image.fromarray(np.dstack([arr, alpha]), "RGBA").save(folder / f"img{i + 1}.png")
        else:
            Image.fromarray(arr).save(folder / f"img{i + 1}.png")
        (folder / f"img{i + 1}.txt").write_text(f"caption {i + 1}\n")
    return folder


def test_load_image_folder_graph_list_mode(comfy):
    _make_folder(comfy, "set_a", [(40, 30), (64, 64), (33, 47)], rgba_index=1)
    # natural order: img2 before img10
    prompt = {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "set_a", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    res = comfy.run(prompt)
    images, masks, names, captions, count = res.outputs["1"]
    assert count == [3]
    assert names == ["img1.png", "img2.png", "img3.png"]
    assert captions == ["caption 1", "caption 2", "caption 3"]
    assert [tuple(t.shape) for t in images] == [(1, 30, 40, 3), (1, 64, 64, 3), (1, 47, 33, 3)]
    # RGBA: mask = 1 - alpha (top half transparent)
    m = masks[1][0]
    assert float(m[:32].min()) == 1.0 and float(m[32:].max()) == 0.0
    assert float(masks[0].max()) == 0.0
    # every image reached the output node
    assert len(res.ui["2"]["images"]) == 3


def test_load_image_folder_batch_mode_and_errors(comfy):
    _make_folder(comfy, "set_b", [(32, 32), (32, 32)])
    prompt = {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "set_b", "mode": "batch", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    res = comfy.run(prompt)
    images = res.outputs["1"][0]
    assert len(images) == 1 and tuple(images[0].shape) == (2, 32, 32, 3)

    _make_folder(comfy, "set_c", [(32, 32), (48, 32)])
    prompt["1"]["inputs"]["folder"] = "set_c"
    res = comfy.run(prompt, expect_success=False)
    assert not res.success
    msg = res.error["exception_message"]
    assert "Load Image Folder (Continuity)" in msg and "'mode'" in msg and "48x32" in msg


@pytest.mark.parametrize("folder", ["../", "../../etc", "/etc", "set_a/../../output", "does_not_exist"])
def test_load_image_folder_refuses_paths_outside_input(comfy, folder):
    prompt = {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    ok, err, _, node_errors = comfy.validate(prompt)
    assert not ok
    text = str(node_errors)
    assert "input 'folder'" in text


def test_tiny_models_sample_through_ksampler(comfy):
    prompt = {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "photo of a man"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["n", 0],
                                                   "latent_image": ["l", 0], "seed": 3, "steps": 4, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["m", 2]}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["d", 0]}},
    }
    a = comfy.run(prompt).value("d")
    b = comfy.run(prompt).value("d")
    assert tuple(a.shape) == (1, 64, 64, 3)
    assert float(a.std()) > 0.01
    assert bool((a == b).all()), "same seed, same result"
