"""Video metrics core: motion intensity (optical flow), region weights, identity over frames."""
import numpy as np
import pytest
from PIL import Image

from continuity import video
from continuity.errors import ContinuityError, MissingModelError


def _moving_square(n=5, shift=4, size=(96, 128), side=32, seed=0):
    """A textured square moving right by ``shift`` px a frame over a flat background."""
    rng = np.random.default_rng(seed)
    tex = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    import cv2
    tex = cv2.GaussianBlur(tex, (5, 5), 1.0)
    frames = []
    for i in range(n):
        f = np.full(size + (3,), 90, np.uint8)
        x = 20 + i * shift
        f[30:30 + side, x:x + side] = tex
        frames.append(f)
    return frames


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_motion_intensity_measures_the_shift(method):
    frames = _moving_square(shift=4)
    res = video.motion_intensity(frames, method, cap=None, max_side=0)
    assert len(res.per_pair) == 4
    # pixels above the mean magnitude are the moving square: their mean is about the shift
    assert 2.5 < res.intensity < 5.5, res.per_pair
    still = video.motion_intensity([frames[0]] * 3, method, cap=None, max_side=0)
    assert still.intensity < 0.2
    faster = video.motion_intensity(_moving_square(shift=8), method, cap=None, max_side=0)
    assert faster.intensity > res.intensity * 1.4


def test_cap_and_downscale_keep_original_pixel_units():
    frames = _moving_square(shift=6, size=(192, 256), side=64)
    full = video.motion_intensity(frames, "farneback", cap=None, max_side=0)
    half = video.motion_intensity(frames, "farneback", cap=None, max_side=128)
    assert half.intensity == pytest.approx(full.intensity, rel=0.35)
    capped = video.motion_intensity(frames, "farneback", cap=2.0, max_side=0)
    assert capped.intensity == 2.0 and capped.raw_intensity == pytest.approx(full.intensity)
    assert capped.to_dict()["cap"] == 2.0


def test_region_weights_follow_the_paper_formula():
    frames = _moving_square(shift=5)
    res = video.motion_intensity(frames, "farneback", max_side=0)
    w = video.region_weights(res.magnitudes, len(frames), frames[0].shape[:2])
    assert w.shape == (5, 96, 128)
    assert w.min() >= 1.0 and w.max() <= 1.5
    m = res.magnitudes[0]
    expected = np.clip(m / m.max() + 0.5, 1, 1.5)
    assert np.allclose(w[1], expected, atol=1e-5)
    assert np.allclose(w[0], w[1])                           # frame 0 takes the first pair's flow
    assert w[2, 40:60, 35:55].mean() > w[2, 80:, :].mean() + 0.2   # moving square vs still background
    still = video.motion_intensity([frames[0]] * 2, "farneback", max_side=0)
    assert np.all(video.region_weights(still.magnitudes, 2) == 1.0)


def test_flow_errors():
    f = _moving_square(n=2)
    with pytest.raises(ContinuityError, match="at least 2 frames"):
        video.motion_intensity(f[:1])
    with pytest.raises(ContinuityError, match="one size"):
        video.motion_intensity([f[0], f[1][:50]])
    with pytest.raises(ContinuityError, match="unknown optical-flow"):
        video.motion_intensity(f, "lucas")


def test_raft_missing_weights_and_random_weight_plumbing(tmp_path):
    with pytest.raises(MissingModelError) as e:
        video.motion_intensity(_moving_square(n=2), "raft_small", models_dir=str(tmp_path))
    assert "raft_small_C_T_V2-01064c6d.pth" in str(e.value) and str(tmp_path / "optical_flow") in str(e.value)
    import torch
    from torchvision.models.optical_flow import raft_small
    torch.manual_seed(0)
    net = raft_small(weights=None, progress=False)
    frames = _moving_square(n=3, size=(68, 84), side=24)    # small, not a multiple of 8: resized and back
    res = video.motion_intensity(frames, "raft_small", raft_model=net, max_side=0, cap=None)
    assert len(res.magnitudes) == 2 and res.magnitudes[0].shape == (68, 84)
    assert np.isfinite(res.intensity)
    # weights from a file in the models folder are found and loaded
    (tmp_path / "optical_flow").mkdir()
    torch.save(net.state_dict(), tmp_path / "optical_flow" / "raft_small_C_T_V2-01064c6d.pth")
    loaded = video.load_raft("raft_small", str(tmp_path))
    assert video.load_raft("raft_small", str(tmp_path)) is loaded
    res2 = video.motion_intensity(frames, "raft_small", models_dir=str(tmp_path), max_side=0, cap=None)
    assert res2.intensity == pytest.approx(res.intensity, rel=1e-4)


def test_identity_over_frames(faces_dir):
    from continuity.faces.embedders import get_embedder

    def load(n):
        img = Image.open(faces_dir / n).convert("RGB")
        img.thumbnail((640, 640))
        return np.asarray(img)

    ref = load("img1.jpg")
    same = load("img2.jpg")
    other = load("img3.jpg")
    size = (480, 480)
    frames = [np.asarray(Image.fromarray(x).resize(size)) for x in (same, same, other)]
    frames.append(np.full(size + (3,), 30, np.uint8))        # no face
    res = video.identity_over_frames(frames, [ref], get_embedder("dlib"))
    assert res.face_found == [True, True, True, False]
    assert res.per_frame[3] is None and res.per_reference[3] is None
    assert res.per_frame[0] == pytest.approx(res.per_frame[1])
    assert res.per_frame[0] > res.threshold > res.per_frame[2]
    vals = [v for v in res.per_frame if v is not None]
    assert res.id_consistency_loss == pytest.approx(1 - np.mean(vals))
    d = res.to_dict()
    assert d["frames"] == 4 and d["frames_with_face"] == 3


def test_raft_correlation_volume_is_bounded_before_any_model_runs():
    # RAFT's correlation is (H/8 x W/8)^2 floats per pair: 4 GB at 1080p, 275 GB at 4096^2 (max_side allows
    # 4096): refused from the frame size, naming max_side, before the network is loaded or run
    frames = [np.zeros((1080, 1920, 3), np.uint8)] * 2
    never = type("Never", (), {"eval": lambda self: pytest.fail("the network was used")})()
    with pytest.raises(ContinuityError, match="max_side") as err:
        video.motion_intensity(frames, "raft_small", raft_model=never, max_side=0, cap=None)
    assert err.value.input == "max_side"
    limit = int(str(err.value).split("max_side to at most ")[-1].split(",")[0])
    assert 512 <= limit < 1920                       # the advice: a size that fits, the default 512 included
