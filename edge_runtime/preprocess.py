"""The one preprocessing path: a photo or a camera frame becomes the model's input pixels.

Training (toolchain), the parity check and the device all call these functions, so a photo becomes
the same uint8 tensor everywhere. Pixel scaling to the network's range lives inside the model; what
leaves this module is always RGB uint8 of shape (height, width, 3).

Decoding (files): by content, never by extension. JPEG, PNG (RGBA, palette, 16-bit), BMP, GIF (first
frame), WebP and TIFF are read with Pillow; EXIF orientation is applied; grayscale, palette and CMYK
become RGB; transparent pixels are composited on white; 16-bit samples keep their high byte.

Resize policies (the model's metadata records which one it was trained with):
- ``crop`` (default): take the largest centred region with the model's aspect ratio (a square), then
  resize it. Nothing is distorted; the borders of a non-square photo are dropped.
- ``squash``: resize the whole image to the model's size, distorting the aspect ratio.
- ``pad``: fit the whole image inside the model's size and fill the rest with black (letterbox).
Interpolation: when shrinking, area averaging by the largest whole factor (no aliasing, and OpenCV's
fast path), then bilinear for what remains (a factor below 2); when enlarging, bilinear.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ImageError

RESIZE_POLICIES = ("crop", "squash", "pad")
DEFAULT_RESIZE = "crop"
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def decode_image(source) -> np.ndarray:
    """Decode an image file (path, bytes or file object) into an RGB uint8 array (H, W, 3).

    Raises ImageError with the path and a reason for anything that is not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = str(source) if isinstance(source, (str, os.PathLike)) else "<image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        import io

        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            im.load()  # decode now, so truncation and corruption surface here
            im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im)
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageError(name, "is a folder, not an image") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower():
            raise ImageError(name, f"truncated image ({reason})") from None
        raise ImageError(name, f"corrupt image ({reason})") from None


def _to_rgb_array(im) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.clip(a, 0, 255)
        elif mode.startswith("I;16") or a.max(initial=0) > 255:
            a = np.clip(a, 0, 65535).astype(np.uint32) >> 8  # keep the high byte of 16-bit samples
        a = a.astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
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


def fit(image: np.ndarray, size, policy: str = DEFAULT_RESIZE, bgr: bool = False) -> np.ndarray:
    """Resize an RGB (or, with bgr=True, BGR) uint8 image to ``size`` = (height, width) as RGB uint8.

    This is the function every stage uses; see the module docstring for the policies.
    """
    import cv2

    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; use one of {', '.join(RESIZE_POLICIES)}")
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        a = to_rgb(a)  # grayscale / alpha: normalise first (channel order kept)
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
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


def iter_image_files(root: Path):
    """Every non-hidden file under ``root`` (recursively, sorted). Formats are decided by content."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f
