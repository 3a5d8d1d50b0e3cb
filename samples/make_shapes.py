"""Generate the bundled sample dataset: samples/shapes/<class>/*.jpg (deterministic, seeded).

Four classes of photo-like pictures: a circle, a square, a triangle or a star of a random colour, size,
position and rotation, lit with a soft highlight and a shadow, on a textured background of random
colours, with sensor noise, saved as JPEG. Colour and background say nothing about the class: only the
shape does. Run it again and the same bytes come out (for a given Pillow/OpenCV build).

    python samples/make_shapes.py            # writes samples/shapes/ (about 1.5 MB)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASSES = ("circle", "square", "star", "triangle")
SIZE = 160


def _background(rng) -> np.ndarray:
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    g = np.clip(np.cos(angle) * xx + np.sin(angle) * yy, 0, 1)[..., None]
    img = c1 * (1 - g) + c2 * g
    # low-frequency texture
    tex = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    img = img + tex[..., None] * rng.uniform(5, 25)
    return img.astype(np.float32)


def _polygon(kind: str, cx, cy, r, rot) -> np.ndarray:
    if kind == "square":
        angles = rot + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif kind == "triangle":
        angles = rot + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r * 1.15)
    else:  # star
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.15, r * 0.48)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)


def draw(kind: str, rng) -> np.ndarray:
    img = _background(rng)
    r = rng.uniform(0.2, 0.34) * SIZE
    cx, cy = rng.uniform(r + 6, SIZE - r - 6, 2)
    rot = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind == "circle":
        cv2.circle(mask, (int(cx), int(cy)), int(r), 255, -1, cv2.LINE_AA)
    else:
        cv2.fillPoly(mask, [_polygon(kind, cx, cy, r, rot)], 255, cv2.LINE_AA)
    m = mask.astype(np.float32)[..., None] / 255.0
    # shadow
    shift = np.float32([[1, 0, rng.uniform(3, 8)], [0, 1, rng.uniform(3, 8)]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(m[..., 0], shift, (SIZE, SIZE)), (9, 9), 3)[..., None]
    img = img * (1 - 0.45 * shadow)
    # shaded fill
    colour = rng.integers(0, 256, 3).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    light = 1.0 + 0.35 * np.exp(-(((xx - cx + r / 3) ** 2 + (yy - cy + r / 3) ** 2) / (2 * (r / 1.5) ** 2)))
    img = img * (1 - m) + (colour * light[..., None]) * m
    img += rng.normal(0, rng.uniform(2, 8), img.shape)
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.9))
    return np.clip(img, 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "shapes"))
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    for ci, kind in enumerate(CLASSES):
        (out / kind).mkdir(parents=True)
        for i in range(args.per_class):
            rng = np.random.default_rng([args.seed, ci, i])
            Image.fromarray(draw(kind, rng)).save(out / kind / f"{kind}_{i:03d}.jpg", quality=80)
    total = sum(f.stat().st_size for f in out.rglob("*.jpg"))
    print(f"wrote {len(CLASSES) * args.per_class} images to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
