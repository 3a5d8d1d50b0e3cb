"""Decoding by content and the one resize path (edge_runtime.preprocess), on real files."""

from __future__ import annotations

import io
import signal
from contextlib import contextmanager

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
    """edgetl's own policies (crop, squash, pad): a 1-pixel checkerboard shrunk 4x becomes flat grey (area
    averaging), not alias. The default, ``mediapipe``, samples as MediaPipe does (one bilinear warp, no
    averaging), so the same board aliases there, exactly as fit_like_mediapipe (and MediaPipe) makes it."""
    board = np.repeat((np.indices((160, 160)).sum(0) % 2 * 255).astype(np.uint8)[..., None], 3, 2)
    for policy in ("crop", "squash", "pad"):
        out = preprocess.fit(board, (40, 40), policy)
        assert abs(out.mean() - 127.5) < 2 and out.std() < 2
        odd = preprocess.fit(board, (56, 56), policy)  # non-integer factor
        assert abs(odd.mean() - 127.5) < 3 and odd.std() < 12
    assert preprocess.DEFAULT_RESIZE == "mediapipe"
    mp = preprocess.fit(board, (40, 40))
    np.testing.assert_array_equal(mp, preprocess.fit_like_mediapipe(board, (40, 40)))
    assert abs(mp.mean() - 127.5) > 60  # every 4th pixel of the board: aliased


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


# ------------------------------------------------------------------ entries that are not regular files


class Hang(BaseException):
    """Raised by the watchdog: a BaseException, so no `except Exception` in the code under test hides it."""


@contextmanager
def watchdog(seconds: int, what: str):
    """Fail instead of hanging the suite if the block runs longer than ``seconds`` (SIGALRM interrupts even
    a blocking open() of a named pipe; the handler's exception ends it)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise Hang(f"{what} took more than {seconds} s: something blocks")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _strays(d):
    """Real non-regular entries in folder ``d``: a named pipe, a socket, a symbolic link to /dev/zero, a
    dangling link. (A socket file stays on disk after its socket is closed.)"""
    import os
    import socket

    os.mkfifo(d / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    sock.close()
    os.symlink("/dev/zero", d / "zero.jpg")
    os.symlink(d / "nowhere.jpg", d / "dangling.jpg")


def _photo(path):
    Image.fromarray(_gradient()).save(path)


def test_non_regular_files_are_refused_without_being_read(tmp_path):
    """A named pipe with no writer would block a read forever, /dev/zero never ends: neither is opened."""
    _strays(tmp_path)
    with watchdog(60, "decoding a pipe, a socket or a device"):
        for name, kind in (("pipe.jpg", "named pipe"), ("sock.png", "socket"), ("zero.jpg", "character device"),
                           ("dangling.jpg", "dangling symbolic link")):
            with pytest.raises(preprocess.NotAnImage) as e:
                preprocess.decode_image(tmp_path / name)
            assert e.value.reason.startswith(f"not a regular file ({kind}"), e.value.reason
        with pytest.raises(preprocess.NotAnImage, match="/dev/zero"):
            preprocess.read_file(tmp_path / "zero.jpg")
    # a link to a photo is a photo
    _photo(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert preprocess.decode_image(tmp_path / "link.png").shape == (40, 60, 3)


def test_walk_lists_what_it_skips(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    _photo(tmp_path / "a" / "x.png")
    _photo(tmp_path / "a" / "deep" / "y.png")
    (tmp_path / "a" / "notes.txt").write_text("a regular file: yielded, decoding decides")
    _strays(tmp_path / "a")
    (tmp_path / "a" / "linked").symlink_to(tmp_path / "a" / "deep")
    with watchdog(60, "walking a folder with a pipe in it"):
        skipped = []
        files = [p.relative_to(tmp_path).as_posix() for p in preprocess.iter_image_files(tmp_path, skipped)]
    assert files == ["a/notes.txt", "a/x.png", "a/deep/y.png"]
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert reasons == {
        "pipe.jpg": "not a regular file (named pipe)",
        "sock.png": "not a regular file (socket)",
        "zero.jpg": "not a regular file (character device, via a symbolic link to /dev/zero)",
        "dangling.jpg": "not a regular file (dangling symbolic link)",
        "linked": "symbolic link to a folder (not followed)",
    }
    assert all(s["not_an_image"] for s in skipped)
    # a root that is itself a pipe: skipped with the reason, nothing yielded, nothing blocks
    import os

    os.mkfifo(tmp_path / "p2")
    skipped = []
    assert list(preprocess.iter_image_files(tmp_path / "p2", skipped)) == []
    assert skipped[0]["reason"] == "not a regular file (named pipe)"


def unprivileged_python():
    """Command prefix running Python without the right to bypass file permissions: as root (CAP_DAC_OVERRIDE)
    a chmod 000 folder is readable, so root runs it under `setpriv` with those capabilities dropped."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable]
    if subprocess.run(cmd + ["-c", "pass"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return cmd


@pytest.fixture
def locked_folder(tmp_path):
    """A data folder with a photo in a readable and in a permission-denied (chmod 000) sub-folder."""
    for sub in ("open", "locked"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        _photo(tmp_path / "d" / sub / "x.png")
    (tmp_path / "d" / "locked").chmod(0)
    yield tmp_path / "d"
    (tmp_path / "d" / "locked").chmod(0o755)


def test_unreadable_folder_is_listed_not_skipped_silently(locked_folder):
    import json
    import subprocess

    code = ("import json, sys; from edge_runtime import preprocess; s = []; "
            "f = [str(p) for p in preprocess.iter_image_files(sys.argv[1], s)]; print(json.dumps([f, s]))")
    r = subprocess.run(unprivileged_python() + ["-c", code, str(locked_folder)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    files, skipped = json.loads(r.stdout)
    assert files == [str(locked_folder / "open" / "x.png")]
    assert skipped == [{"path": str(locked_folder / "locked"), "reason": "cannot read folder (permission denied)",
                        "not_an_image": False}]


def test_data_scan_lists_strays_with_the_skipped_files(tmp_path):
    """The toolchain's data scan (edgetl build/train) never opens a pipe, a socket or a device in the data
    folder: each is listed with the skipped files (report and split.json) and the build goes on. (In a
    process under a timeout: the scan decodes on worker threads, which a blocked read would never free.)"""
    import json
    import subprocess
    import sys

    pytest.importorskip("toolchain.core.data")
    from conftest import write_dataset

    photos = write_dataset(tmp_path / "photos", per_class=6)
    _strays(photos / "red")
    code = ("import json, sys; from toolchain.cfg import config; from toolchain.core import data\n"
            "ds = data.build(sys.argv[1], sys.argv[2], config.resolve(None, image_size=96, split=[0.6, 0.2, 0.2]))\n"
            "print(json.dumps([sum(len(v) for v in ds.files.values()), ds.skipped]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(photos), str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, skipped = json.loads(r.stdout.splitlines()[-1])
    assert n == 18
    listed = {s["path"]: s["reason"] for s in skipped}
    assert listed == {
        "red/dangling.jpg": "not a regular file (dangling symbolic link)",
        "red/pipe.jpg": "not a regular file (named pipe)",
        "red/sock.png": "not a regular file (socket)",
        "red/zero.jpg": "not a regular file (character device, via a symbolic link to /dev/zero)",
    }
    assert json.loads((tmp_path / "run" / "split.json").read_text())["skipped"] == skipped
    assert "4 file(s) skipped" in r.stderr and "red/pipe.jpg: not a regular file (named pipe)" in r.stderr


def test_largest_image_is_refused_before_decoding(tmp_path):
    """Above MAX_PIXELS an image is an ImageError from its header alone (no pixel buffer is allocated)."""
    side = int(preprocess.MAX_PIXELS ** 0.5) + 1
    Image.new("L", (side, side)).save(tmp_path / "big.png", compress_level=1)
    with pytest.raises(ImageError, match="image too large .* the limit is 50"):
        preprocess.decode_image(tmp_path / "big.png")
    assert preprocess.MAX_PIXELS == 50_000_000
