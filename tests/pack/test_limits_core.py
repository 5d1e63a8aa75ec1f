"""Resource bounds (continuity.limits and the caps of the readers), checked before anything large is made."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

from continuity import imageio, limits
from continuity.dataset import audit
from continuity.errors import ContinuityError


def test_image_side_and_pixel_caps_name_the_input():
    limits.check_image((8192, 6144, 3), input="images")
    with pytest.raises(ContinuityError, match="at most 8192 px a side") as err:
        limits.check_image((10, 8193), input="sheet")
    assert err.value.input == "sheet"
    with pytest.raises(ContinuityError, match="pixels"):
        limits.check_image((8192, 8192), input="images")
    with pytest.raises(ContinuityError, match="image 2 "):
        limits.check_images([np.zeros((4, 4, 3)), np.zeros((9000, 1, 3))], input="images")


def test_output_budget_scales_with_a_large_input_only():
    limits.check_output(100, 1024, 1024, input="size")
    with pytest.raises(ContinuityError, match="outputs of 8192x8192") as err:
        limits.check_output(10, 8192, 8192, input="size")
    assert err.value.input == "size"
    limits.check_output(300, 1024, 1024, input="size", input_pixels=300 * 1920 * 1080)   # a video batch


def _png_header_only(width, height) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_images_are_refused_from_their_header_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    with pytest.raises(ContinuityError, match="largest side") as err:
        imageio.load_image(str(tmp_path / "bomb.png"), input="folder")
    assert err.value.input == "folder" and str(tmp_path) not in str(err.value)
    (tmp_path / "wide.png").write_bytes(_png_header_only(16000, 16000))
    with pytest.raises(ContinuityError, match="pixels"):
        imageio.load_image(str(tmp_path / "wide.png"))
    with pytest.raises(ContinuityError, match="largest side"):
        imageio.load_folder(str(tmp_path), roots=[str(tmp_path)])
    page = tmp_path / "page"
    page.mkdir()
    for i in range(3):   # 3 x 144 MP claimed: past one load's total, refused before any is decoded
        (page / f"{i}.png").write_bytes(_png_header_only(12000, 12000))
    with pytest.raises(ContinuityError, match="pages") as err:
        imageio.load_folder(str(page), roots=[str(tmp_path)])
    assert err.value.input == "limit"


def test_caption_files_are_capped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * (imageio.MAX_CAPTION_BYTES + 1))
    with pytest.raises(ContinuityError, match="caption file") as err:
        imageio.read_caption(str(tmp_path / "a.png"))
    assert err.value.input == "caption_extension"


def test_contact_sheet_is_bounded_whatever_the_number_of_images():
    images = [np.full((12, 10, 3), i % 255, np.uint8) for i in range(600)]
    rows = [audit.ImageAudit(name=f"i{i}", width=10, height=12, square=False, resolution_ok=False, faces=0,
                             issues=["no face"] if i % 7 == 0 else []) for i in range(600)]
    result = audit.AuditResult(images=rows, coverage={}, summary={}, missing=[])
    sheet = audit.contact_sheet(images, result, thumb=32)
    cols, rows_n = sheet.shape[1] // 32, sheet.shape[0] // (32 + 30)
    assert cols * rows_n >= limits.MAX_CONTACT_THUMBS and cols * (rows_n - 1) < limits.MAX_CONTACT_THUMBS
