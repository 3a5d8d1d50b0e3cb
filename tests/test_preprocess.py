"""Decoding by content and the one resize path (edge_runtime.preprocess), on real files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge_runtime import preprocess
from edge_runtime.errors import ImageError


def _gradient(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)


def test_formats_by_content_not_extension(tmp_path):
    rgb = _gradient()
    for fmt, name in (("JPEG", "a.png"), ("PNG", "b.jpg"), ("BMP", "c.dat"), ("WEBP", "d"), ("TIFF", "e.tiff")):
        p = tmp_path / name
        Image.fromarray(rgb).save(p, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
        out = preprocess.decode_image(p)
        assert out.shape == (40, 60, 3) and out.dtype == np.uint8, fmt
        tol = 12 if fmt in ("JPEG", "WEBP") else 0
        assert np.abs(out.astype(int) - rgb).mean() <= tol, fmt


def test_png_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, :5, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    out = preprocess.decode_image(tmp_path / "x.png")
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 9].tolist() == [255, 255, 255]


def test_palette_and_grayscale_and_16bit(tmp_path):
    pal = Image.fromarray(_gradient()).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    assert preprocess.decode_image(tmp_path / "p.png").shape == (40, 60, 3)

    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(tmp_path / "g.png")
    g = preprocess.decode_image(tmp_path / "g.png")
    assert g.shape == (8, 8, 3) and (g == 77).all()

    sixteen = np.full((8, 8), 40000, np.uint16)  # 40000 >> 8 == 156
    Image.fromarray(sixteen).save(tmp_path / "s16.png")
    s = preprocess.decode_image(tmp_path / "s16.png")
    assert s.shape == (8, 8, 3) and (s == 156).all()


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((12, 12, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = preprocess.decode_image(tmp_path / "anim.gif")
    assert out.shape == (12, 12, 3) and abs(int(out.mean()) - 10) <= 2


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    out = preprocess.decode_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 150 and g < 80 and b < 80


def test_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white, landscape 40x20
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = preprocess.decode_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)  # portrait after orientation
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half is now on top


@pytest.mark.parametrize("content,reason", [
    (b"hello, this is not an image", "not an image"),
    (b"", "not an image"),
])
def test_non_images(tmp_path, content, reason):
    p = tmp_path / "fake.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        preprocess.decode_image(p)
    assert reason in e.value.reason and e.value.path == str(p)


def test_truncated_and_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, "JPEG")
    data = buf.getvalue()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        preprocess.decode_image(tmp_path / "t.jpg")
    assert "truncated" in e.value.reason
    buf = io.BytesIO()
    Image.fromarray(_gradient(50, 50)).save(buf, "PNG")
    bad = bytearray(buf.getvalue())
    bad[60:90] = b"\x00" * 30  # break the IDAT data
    (tmp_path / "c.png").write_bytes(bytes(bad))
    with pytest.raises(ImageError) as e:
        preprocess.decode_image(tmp_path / "c.png")
    assert "corrupt" in e.value.reason or "truncated" in e.value.reason


def test_missing_file():
    with pytest.raises(ImageError) as e:
        preprocess.decode_image("/nonexistent/x.jpg")
    assert e.value.reason == "file not found"


def test_fit_policies():
    wide = np.zeros((100, 200, 3), np.uint8)
    wide[:, :50] = 255  # left quarter white: dropped by a centre crop
    crop = preprocess.fit(wide, (50, 50), "crop")
    assert crop.shape == (50, 50, 3) and crop.max() == 0
    squash = preprocess.fit(wide, (50, 50), "squash")
    assert squash[:, :10].min() > 200 and squash[:, 15:].max() < 60
    pad = preprocess.fit(np.full((100, 200, 3), 255, np.uint8), (50, 50), "pad")
    assert pad[:10].max() == 0 and pad[20:30].min() == 255  # letterbox bars top and bottom
    with pytest.raises(ValueError):
        preprocess.fit(wide, (50, 50), "stretch")


def test_fit_bgr_and_gray_and_identity():
    rgb = _gradient(64, 64)
    assert preprocess.fit(rgb, (64, 64)) is not None
    np.testing.assert_array_equal(preprocess.fit(rgb[:, :, ::-1].copy(), (64, 64), bgr=True), rgb)
    np.testing.assert_array_equal(preprocess.fit(rgb, (64, 64)), rgb)  # right size: untouched
    gray = preprocess.fit(rgb[:, :, 0].copy(), (32, 32))
    assert gray.shape == (32, 32, 3)


def test_shrink_is_area_averaged():
    """A 1-pixel checkerboard shrunk 4x must become flat grey (area averaging), not alias."""
    board = (np.indices((160, 160)).sum(0) % 2 * 255).astype(np.uint8)
    out = preprocess.fit(np.repeat(board[..., None], 3, 2), (40, 40))
    assert abs(out.mean() - 127.5) < 2 and out.std() < 2
    odd = preprocess.fit(np.repeat(board[..., None], 3, 2), (56, 56))  # non-integer factor
    assert abs(odd.mean() - 127.5) < 3 and odd.std() < 12


def test_load_image_equals_decode_then_fit(tmp_path):
    Image.fromarray(_gradient(90, 120)).save(tmp_path / "x.png")
    a = preprocess.load_image(tmp_path / "x.png", (32, 32))
    b = preprocess.fit(preprocess.decode_image(tmp_path / "x.png"), (32, 32))
    np.testing.assert_array_equal(a, b)


def test_hidden_files_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "y.jpg").write_bytes(b"x")
    files = [p.name for p in preprocess.iter_image_files(tmp_path)]
    assert files == ["x.jpg"]
