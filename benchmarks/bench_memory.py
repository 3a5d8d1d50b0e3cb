"""Peak memory of `edgetl build` on a 4,000-photo folder made from the shared photos.

The folder: each of the 800 flowers10 photos in five versions (as is, mirrored, rotated, cropped,
darkened), re-encoded as JPEG, 10 classes x 400. The build runs with the defaults (160 px, alpha 1.0,
ImageNet weights, int8) in a child process; its peak resident memory comes from getrusage.

    python benchmarks/bench_memory.py [--photos 4000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLOWERS, edgetl, imagenet_env, need_shared


def make_folder(dest: Path, total: int) -> int:
    from PIL import Image, ImageEnhance, ImageOps

    variants = [
        lambda im: im,
        ImageOps.mirror,
        lambda im: im.rotate(90, expand=True),
        lambda im: im.crop((im.width // 10, im.height // 10, im.width * 9 // 10, im.height * 9 // 10)),
        lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    ]
    sources = sorted(p for p in FLOWERS.rglob("*") if p.is_file() and not p.name.startswith("."))
    n = 0
    for v, fn in enumerate(variants):
        for src in sources:
            if n >= total:
                return n
            out = dest / src.parent.name / f"{src.stem}_v{v}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                fn(im.convert("RGB")).save(out, quality=90)
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=4000)
    ap.add_argument("--keep", default=None, help="keep the folder and run here")
    args = ap.parse_args()
    need_shared()
    env = imagenet_env()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgetl-mem-"))
    try:
        photos = base / "photos"
        if not photos.is_dir():
            n = make_folder(photos, args.photos)
        else:
            n = sum(1 for p in photos.rglob("*.jpg"))
        size = sum(p.stat().st_size for p in photos.rglob("*.jpg")) / 1e6
        t0 = time.perf_counter()
        r = edgetl("build", photos, "--out", base / "run", "--force", env=env)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"edgetl build on {n} photos ({size:.0f} MB of JPEG): exit {r.returncode}, {wall:.0f} s")
        print(f"peak resident memory of the build process: {peak_mb:.0f} MB ({peak_mb / 1024:.2f} GB)")
        cache = base / "run" / "cache" / "images.npy"
        if cache.exists():
            print(f"decoded-photo cache (memory-mapped, not resident): {cache.stat().st_size / 1e6:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
