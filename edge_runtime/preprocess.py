"""The one preprocessing path: a photo or a camera frame becomes the model's input pixels.

Training (toolchain), the parity check and the device all call these functions, so a photo becomes
the same uint8 tensor everywhere. Pixel scaling to the network's range lives inside the model; what
leaves this module is always RGB uint8 of shape (height, width, 3).

Decoding (files): by content, never by extension. JPEG, PNG (RGBA, palette, 16-bit), BMP, GIF (first
frame), WebP and TIFF are read with Pillow; EXIF orientation is applied; grayscale, palette and CMYK
become RGB; transparent pixels are composited on white; 16-bit samples keep their high byte.

Resize policies (the model's metadata records which one it was trained with):
- ``mediapipe`` (default): the whole frame resized as MediaPipe Tasks and the TFLite Task Library fit
  every model, whatever it was trained with (``fit_like_mediapipe``: one bilinear warp, MediaPipe's exact
  arithmetic). A model trained on it sees the same pixels in edge_runtime and in those consumers.
- ``crop``: take the largest centred region with the model's aspect ratio (a square), then resize it.
  Nothing is distorted; the borders of a non-square photo are dropped (for edge_runtime alone).
- ``squash``: resize the whole image to the model's size, distorting the aspect ratio.
- ``pad``: fit the whole image inside the model's size and fill the rest with black (letterbox).
Interpolation of crop, squash and pad: when shrinking, area averaging by the largest whole factor (no
aliasing, and OpenCV's fast path), then bilinear for what remains (a factor below 2); when enlarging,
bilinear.

``fit_like_mediapipe`` is also how the runtime feeds models edgetl did not write, which were made for
such consumers.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from . import files
from .errors import ImageError

RESIZE_POLICIES = ("mediapipe", "crop", "squash", "pad")
DEFAULT_RESIZE = "mediapipe"
# What an edgetl model whose metadata names no policy was trained with (the default before "mediapipe").
LEGACY_RESIZE = "crop"
INTERPOLATION = {"mediapipe": "bilinear warp of the whole frame (MediaPipe Tasks' arithmetic)"}
AREA_INTERPOLATION = "area (shrink) / bilinear (enlarge)"


def interpolation(policy: str) -> str:
    """How ``policy`` samples the photo, as the model's metadata records it."""
    return INTERPOLATION.get(policy, AREA_INTERPOLATION)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


# Limits of what is decoded (documented in the README, "What edgetl guarantees").
# 50 megapixels covers 48 MP phone photos and most cameras (8660 x 5773 at 3:2). Decoding one that large peaks
# at about 0.4 GB (Pillow's 4-byte pixels plus the 3-byte RGB result; measured 384 MB for such a JPEG, 391 MB
# for a transparent PNG), which fits a 1 GB device. Larger images are refused from their header, before any
# pixel is decoded (Pillow's own decompression-bomb limit, 179 megapixels, is higher and stays in force).
MAX_PIXELS = 50_000_000
# A file larger than this is not read at all (a 50 MP 16-bit RGBA TIFF, uncompressed, is 400 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
# Names that say "photo": a file with one of these that does not decode is a corrupt photo, not a stray file.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .bmp .dib .webp .tif .tiff .heic .heif .avif .jxl .jp2 .j2k "
    ".ppm .pgm .pbm .pnm .tga .ico .dng .cr2 .nef .arw".split()
)


class NotAnImage(ImageError):
    """The entry is not an image at all (not a regular file, or content that no decoder recognises under a
    name without an image extension): skipped as a stray file rather than counted as a corrupt photo."""


def check_regular(path) -> os.stat_result:
    """``os.stat`` of ``path`` when it is a regular file (symbolic links followed); otherwise NotAnImage (a
    pipe, socket, device, dangling link) or ImageError (a folder, missing, permission denied) with the
    reason. Nothing is opened, so a named pipe cannot block and a device is never read."""
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotAnImage(name, "not a regular file (dangling symbolic link)") from None
        raise _os_error(name, FileNotFoundError()) from None
    except OSError as e:
        raise _os_error(name, e) from None
    if not stat.S_ISREG(st.st_mode):
        kind = files.kind(st.st_mode)
        if kind == "folder":
            raise ImageError(name, "is a folder, not an image")
        via = ""
        if os.path.islink(path):
            try:
                via = f", via a symbolic link to {os.readlink(path)}"
            except OSError:
                via = ", via a symbolic link"
        raise NotAnImage(name, f"not a regular file ({kind}{via})")
    return st


def _os_error(name: str, e: OSError) -> ImageError:
    """The file's error for an OSError met while looking at or opening it."""
    if isinstance(e, FileNotFoundError):
        return ImageError(name, "file not found")
    if isinstance(e, PermissionError):
        return ImageError(name, "permission denied")
    return ImageError(name, f"cannot read ({e.strerror or e})")


def open_regular(path):
    """A binary file object for a regular file, opened without blocking (O_NONBLOCK: if the entry was swapped
    for a named pipe after the check, the open returns at once) and checked again on the open descriptor
    (fstat), so only a regular file of at most MAX_FILE_BYTES is ever read. Errors as in check_regular."""
    name = str(path)
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:  # e.g. ENXIO: a socket appeared in its place
        raise _os_error(name, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAnImage(name, f"not a regular file ({files.kind(st.st_mode)})")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large ({st.st_size / 2**20:.0f} MB; the limit is "
                                   f"{MAX_FILE_BYTES // 2**20} MB)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path) -> bytes:
    """The bytes of a regular file, read with the checks of open_regular (never more than MAX_FILE_BYTES)."""
    with open_regular(path) as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise ImageError(str(path), f"file too large (over {MAX_FILE_BYTES // 2**20} MB)")
    return data


_PIL_MODULES = r"PIL(\.|$)"


def _exif_in_place() -> bool:
    import inspect

    from PIL import ImageOps

    return "in_place" in inspect.signature(ImageOps.exif_transpose).parameters  # Pillow >= 9.4


_EXIF_IN_PLACE = None


def _quiet_pillow():
    """Pillow warns about damaged metadata it works around (corrupt EXIF, odd TIFF tags) and about images
    above its own pixel limit; decode_image reports what matters as ImageError, so those warnings only add
    noise. They are filtered for warnings raised inside PIL only, with a global filter (catch_warnings is
    not thread-safe, and the toolchain decodes on several threads), added again if something reset them."""
    for f in warnings.filters:
        if f[0] == "ignore" and f[3] is not None and f[3].pattern == _PIL_MODULES:
            return
    warnings.filterwarnings("ignore", module=_PIL_MODULES)


def decode_image(source) -> np.ndarray:
    """Decode an image file (path, bytes or file object) into an RGB uint8 array (H, W, 3).

    Raises ImageError with the path and a reason for anything that is not a readable image: any failure of
    the decoder on a file is that file's error (MemoryError and KeyboardInterrupt are not turned into one).
    A path is read only if it is a regular file (not a pipe, socket or device; see open_regular) and at most
    MAX_FILE_BYTES; images above MAX_PIXELS are refused before their pixels are decoded. NotAnImage (an
    ImageError) marks entries that are not images at all, as opposed to damaged or unsupported photos.
    """
    from PIL import Image

    global _EXIF_IN_PLACE
    if _EXIF_IN_PLACE is None:
        _EXIF_IN_PLACE = _exif_in_place()
    _quiet_pillow()
    is_path = isinstance(source, (str, os.PathLike))
    name = str(source) if is_path else "<image>"
    ext = os.path.splitext(name)[1].lower() if is_path else ""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(name, f"file too large (over {MAX_FILE_BYTES // 2**20} MB)")
        source = io.BytesIO(source)
    fh = open_regular(source) if is_path else None
    try:
        src = fh if fh is not None else source
        if hasattr(src, "seek") and hasattr(src, "read"):
            check_container(src, name)
        with Image.open(src) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(name, f"image too large ({w} x {h} = {w * h / 1e6:.0f} megapixels; the limit "
                                       f"is {MAX_PIXELS / 1e6:.0f})")
            if w < 1 or h < 1:
                raise ImageError(name, f"corrupt image (size {w} x {h})")
            im.load()  # decode now, so truncation and corruption surface here
            from PIL import ImageOps

            if _EXIF_IN_PLACE:
                ImageOps.exif_transpose(im, in_place=True)  # no full-size copy
            else:
                im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the decoder raise is its error
        raise _decode_error(name, ext, e) from None
    finally:
        if fh is not None:
            fh.close()


# Containers whose directory declares one size while the picture Pillow decodes is another image inside: an
# ICO (or CUR) entry says 16 x 16 (one byte each) but points at a PNG or BMP of any size; an ICNS entry's type
# says 1024 x 1024 but holds any PNG or JPEG 2000. Pillow decodes that inner image (its ICO plugin does so
# inside Image.open, the largest entry; ICNS at load) before it notices the size differs, so neither the
# declared size nor Pillow's reported size can be trusted in time: the directory is read here, before Pillow
# sees the file, and every embedded image's real size comes from its own header (PNG IHDR, BMP info header,
# JPEG 2000 SIZ marker or JP2 ihdr box). Other formats Pillow reads report at open the size they decode (a
# GIF frame larger than its screen grows the size at open; MPO and multi-page TIFF decode only their first
# image, at the size of its own header), so the MAX_PIXELS check after Image.open covers them.
HEADER_PEEK = 256  # bytes read from the start of an embedded image to find its size
ICO_MAGIC = (b"\0\0\1\0", b"\0\0\2\0")  # ICO, CUR
ICNS_MAGIC = b"icns"


def embedded_size(head: bytes, dib: bool = False):
    """(width, height) of an image from the first bytes of its data (PNG, JPEG 2000 codestream or JP2, or
    with ``dib`` an ICO's BMP info header, whose height counts the colour and the mask rows), or None."""
    import struct

    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) >= 24:  # SIZ: Xsiz, Ysiz, XOsiz, YOsiz
        x, y, x0, y0 = struct.unpack(">IIII", head[8:24])
        return max(0, x - x0), max(0, y - y0)
    if head[4:8] == b"jP  " or head[:4] == b"\x0d\x0a\x87\x0a":
        i = head.find(b"ihdr")
        if i >= 4 and len(head) >= i + 12:
            h, w = struct.unpack(">II", head[i + 4 : i + 12])
            return w, h
        return None
    if dib and len(head) >= 12:
        (hsize,) = struct.unpack("<I", head[:4])
        if hsize == 12:
            w, h = struct.unpack("<HH", head[4:8])
        else:
            w, h = struct.unpack("<ii", head[4:12])
        return abs(w), abs(h) // 2
    return None


def _container_entries(f, base: int) -> tuple:
    """(format, [(offset, declared (w, h) or None, is an ICO BMP)]) of an ICO/CUR/ICNS file object, or
    (None, []) for any other content."""
    import struct

    f.seek(base)
    head = f.read(8)
    out = []
    if len(head) < 8:
        return None, []
    if head[:4] in ICO_MAGIC:
        (count,) = struct.unpack("<H", head[4:6])
        f.seek(base + 6)
        directory = f.read(16 * count)
        for k in range(len(directory) // 16):
            w, h, _, _, _, _, _, offset = struct.unpack("<BBBBHHII", directory[16 * k : 16 * k + 16])
            out.append((base + offset, (w or 256, h or 256), True))
        return ("ICO" if head[2] == 1 else "CUR"), out
    if head[:4] == ICNS_MAGIC:
        pos = 8
        (total,) = struct.unpack(">I", head[4:8])
        while pos + 8 <= total:
            f.seek(base + pos)
            entry = f.read(8)
            if len(entry) < 8:
                break
            (length,) = struct.unpack(">I", entry[4:8])
            out.append((base + pos + 8, None, False))
            if length < 8:
                break
            pos += length
        return "ICNS", out
    return None, []


def check_container(f, name: str):
    """ImageError when an ICO, CUR or ICNS file holds an embedded image above MAX_PIXELS, from the
    embedded images' own headers, before Pillow decodes anything (see HEADER_PEEK's comment)."""
    pos = f.tell()
    try:
        fmt, entries = _container_entries(f, pos)
        for offset, declared, dib in entries:
            f.seek(offset)
            size = embedded_size(f.read(HEADER_PEEK), dib)
            if size is None:
                continue
            w, h = size
            if w * h > MAX_PIXELS:
                says = f"declares {declared[0]} x {declared[1]} but " if declared else ""
                raise ImageError(name, f"image too large: the {fmt} file {says}holds an image of {w} x {h} = "
                                       f"{w * h / 1e6:.0f} megapixels (the limit is {MAX_PIXELS / 1e6:.0f})")
    finally:
        f.seek(pos)


def _decode_error(name: str, ext: str, e: Exception) -> ImageError:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        if ext in IMAGE_EXTENSIONS:  # named like a photo: a damaged or unsupported one
            return ImageError(name, f"not an image (unrecognised format) despite its {ext} name: damaged, "
                                    f"or a format Pillow cannot read")
        return NotAnImage(name, "not an image (unrecognised format)")
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(name, f"image too large ({e})")
    if isinstance(e, PermissionError):
        return _os_error(name, e)
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if len(reason) > 200:
        reason = reason[:200] + "..."
    if "truncated" in reason.lower() or isinstance(e, EOFError):
        return ImageError(name, f"truncated image ({reason})")
    return ImageError(name, f"corrupt image ({reason})")


BAND_BYTES = 1 << 22  # large images are converted in bands of rows of about this size


def _to_rgb_array(im) -> np.ndarray:
    """RGB uint8 pixels of a loaded Pillow image. Large images are converted band by band into one
    preallocated array (every step is per pixel, so the result is the same), so the peak memory is the
    decoded image plus its RGB copy, not several full-size intermediates."""
    mode = im.mode
    w, h = im.size
    shift16 = mode.startswith("I;16") or (mode == "I" and (im.getextrema()[1] or 0) > 255)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    rows = max(1, BAND_BYTES // max(1, w * 4))
    if rows >= h:
        return _band_to_rgb(im, shift16, has_alpha)
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, rows):
        out[y : y + rows] = _band_to_rgb(im.crop((0, y, w, min(h, y + rows))), shift16, has_alpha)
    return out


def _band_to_rgb(im, shift16: bool, has_alpha: bool) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.clip(np.nan_to_num(a), 0, 255)
        elif shift16:
            a = np.clip(a, 0, 65535).astype(np.uint32) >> 8  # keep the high byte of 16-bit samples
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        canvas.alpha_composite(rgba)
        im = canvas
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def to_rgb(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Normalise an array to 3-channel uint8: grayscale is repeated, alpha dropped, BGR flipped."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return a[:, :, ::-1] if bgr else a


def _fit_input(image, size) -> tuple:
    """(3-channel uint8 pixels, target height, target width) for the fitting functions: grayscale and
    alpha normalised first (channel order kept); an empty image is a ValueError."""
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        a = to_rgb(a)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError("empty image")
    return a, th, tw


def fit(image: np.ndarray, size, policy: str = DEFAULT_RESIZE, bgr: bool = False) -> np.ndarray:
    """Resize an RGB (or, with bgr=True, BGR) uint8 image to ``size`` = (height, width) as RGB uint8.

    This is the function every stage uses; see the module docstring for the policies.
    """
    import cv2

    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; use one of {', '.join(RESIZE_POLICIES)}")
    if policy == "mediapipe":
        return fit_like_mediapipe(image, size, bgr=bgr)
    a, th, tw = _fit_input(image, size)
    h, w = a.shape[:2]
    if policy == "crop":
        if w * th > h * tw:  # too wide: crop the width
            cw = max(1, round(h * tw / th))
            x0 = (w - cw) // 2
            a = a[:, x0 : x0 + cw]
        elif w * th < h * tw:  # too tall: crop the height
            ch = max(1, round(w * th / tw))
            y0 = (h - ch) // 2
            a = a[y0 : y0 + ch]
        out = _resize(cv2, a, tw, th)
    elif policy == "squash":
        out = _resize(cv2, a, tw, th)
    else:  # pad
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = _resize(cv2, a, nw, nh)
        out = np.zeros((th, tw, 3), np.uint8)
        y0, x0 = (th - nh) // 2, (tw - nw) // 2
        out[y0 : y0 + nh, x0 : x0 + nw] = inner
    if bgr:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return out


def fit_like_mediapipe(image: np.ndarray, size, bgr: bool = False) -> np.ndarray:
    """The whole frame resized to ``size`` = (height, width) as MediaPipe Tasks' ImageClassifier does on a
    CPU: one bilinear warp that maps the image's corners onto the input's corners (no area averaging, no
    half-pixel shift), edges replicated. Returns RGB uint8. Measured against MediaPipe 1.2.3 (a model that
    outputs its input): identical on synthetic images; on photos a few pixels differ by a few levels,
    where the two fixed-point bilinear implementations round differently."""
    import cv2

    a, th, tw = _fit_input(image, size)
    h, w = a.shape[:2]
    if (h, w) == (th, tw):
        out = np.ascontiguousarray(a)
    else:
        m = np.array([[tw / w, 0.0, 0.0], [0.0, th / h, 0.0]], np.float64)
        out = cv2.warpAffine(np.ascontiguousarray(a), m, (tw, th), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if bgr else out


def _resize(cv2, a: np.ndarray, tw: int, th: int) -> np.ndarray:
    """Shrink: area averaging by the largest whole factor (OpenCV's fast exact path), then bilinear for
    the remaining factor below 2. Enlarge: bilinear. Same result on every platform and every stage."""
    h, w = a.shape[:2]
    if (h, w) == (th, tw):
        return np.ascontiguousarray(a)
    k = min(w // tw, h // th)
    if k >= 2:
        h2, w2 = h - h % k, w - w % k
        y0, x0 = (h % k) // 2, (w % k) // 2
        a = cv2.resize(a[y0 : y0 + h2, x0 : x0 + w2], (w2 // k, h2 // k), interpolation=cv2.INTER_AREA)
        h, w = a.shape[:2]
        if (h, w) == (th, tw):
            return a
    return cv2.resize(a, (tw, th), interpolation=cv2.INTER_LINEAR)


def load_image(path, size, policy: str = DEFAULT_RESIZE) -> np.ndarray:
    """Decode a file and fit it to the model: the exact tensor training and the device both use."""
    return fit(decode_image(path), size, policy)


def iter_image_files(root, skipped: list | None = None):
    """Every non-hidden regular file under ``root`` (recursively, sorted). Formats are decided by content.

    Only regular files are yielded (symbolic links to regular files included). Entries that are not (named
    pipes, sockets, devices, dangling links, links to folders, which are not followed) and sub-folders that
    cannot be read are never opened; when ``skipped`` is a list, each is appended to it as
    ``{"path", "reason", "not_an_image"}`` as soon as it is met (so a caller can report while it iterates);
    ``not_an_image`` is True for entries that are not image files at all (pipes, sockets, devices, links)
    and False for what may hide photos (an unreadable folder or file). Without the list they are skipped
    silently. A ``root`` that is not a folder is checked the same way.
    """
    root = Path(root)

    def skip(path, reason, not_an_image=True):
        if skipped is not None:
            skipped.append({"path": str(path), "reason": reason, "not_an_image": not_an_image})

    if not root.is_dir():
        try:
            check_regular(root)
        except ImageError as e:
            skip(root, e.reason, isinstance(e, NotAnImage))
            return
        yield root
        return

    def unreadable(err: OSError):
        why = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
        skip(err.filename or root, f"cannot read folder ({why})", False)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if os.path.islink(base / d):  # not followed (loops, and data outside the folder)
                skip(base / d, "symbolic link to a folder (not followed)")
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = base / f
            try:
                check_regular(p)
            except ImageError as e:
                skip(p, e.reason, isinstance(e, NotAnImage))
                continue
            yield p
