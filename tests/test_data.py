"""Data folder validation, splitting and the decode-once cache (no TensorFlow needed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import colour_image, write_dataset
from PIL import Image

from edge_runtime import preprocess
from edge_runtime.errors import EdgetlError
from toolchain.cfg import config
from toolchain.core import data


def cfg(**kw):
    kw.setdefault("image_size", 96)
    return config.resolve(None, **kw)


def test_split_is_deterministic_and_stratified():
    items = [(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(40 + 10 * c)]
    a = data.stratified_split(items, 3, [0.8, 0.1, 0.1], seed=1)
    b = data.stratified_split(list(reversed(items)), 3, [0.8, 0.1, 0.1], seed=1)
    assert a == b  # order of discovery does not matter
    c = data.stratified_split(items, 3, [0.8, 0.1, 0.1], seed=2)
    assert a != c
    for label, n in ((0, 40), (1, 50), (2, 60)):
        counts = {s: sum(1 for _, lab in a[s] if lab == label) for s in a}
        assert counts == {"train": n - 2 * round(n * 0.1), "val": round(n * 0.1), "test": round(n * 0.1)}
    keys = [k for s in a.values() for k, _ in s]
    assert len(keys) == len(set(keys)) == len(items)


def test_split_of_one_class_does_not_move_when_another_grows():
    items = [(f"a/{i}", 0) for i in range(30)] + [(f"b/{i}", 1) for i in range(30)]
    before = data.stratified_split(items, 2, [0.8, 0.1, 0.1], seed=5)
    after = data.stratified_split(items + [("b/new", 1)], 2, [0.8, 0.1, 0.1], seed=5)
    for s in before:
        assert [k for k, lab in before[s] if lab == 0] == [k for k, lab in after[s] if lab == 0]


def test_build_records_split_and_cache(tmp_path):
    photos = write_dataset(tmp_path / "photos", per_class=10)
    run = tmp_path / "run"
    ds = data.build(photos, run, cfg(seed=3))
    doc = json.loads((run / "split.json").read_text())
    assert doc["classes"] == ["blue", "green", "red"] and doc["seed"] == 3
    assert {s: len(v) for s, v in doc["files"].items()} == {"train": 24, "val": 3, "test": 3}
    assert (run / "labels.txt").read_text().split() == ["blue", "green", "red"]
    # the cache holds exactly the runtime's preprocessing of each photo
    rel, _label, row = ds.files["test"][0]
    np.testing.assert_array_equal(ds.images[row], preprocess.load_image(photos / rel, (120, 120)))  # 96 / 0.8
    assert isinstance(ds.images, np.memmap)
    again = data.load(run)
    assert again.files == ds.files and again.classes == ds.classes
    # a second run with the same seed makes the same split
    ds2 = data.build(photos, tmp_path / "run2", cfg(seed=3))
    assert {s: [f[0] for f in v] for s, v in ds2.files.items()} == {s: [f[0] for f in v] for s, v in ds.files.items()}


def test_lost_cache_is_rebuilt_from_split(tmp_path):
    photos = write_dataset(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    ds = data.build(photos, run, cfg())
    first = np.array(ds.images[ds.rows("train")])
    shutil.rmtree(run / "cache")
    again = data.load(run)
    np.testing.assert_array_equal(np.asarray(again.images[again.rows("train")]), first)


def test_given_splits_and_missing_test(tmp_path):
    root = tmp_path / "d"
    write_dataset(root / "train", per_class=5)
    write_dataset(root / "val", per_class=2, seed=9)
    ds = data.build(root, tmp_path / "run", cfg())
    assert ds.layout == "splits" and ds.test_is_val
    assert len(ds.rows("test")) == len(ds.rows("val")) == 6
    assert any("val split is also used as the test split" in n for n in ds.notes)


def test_bad_files_are_listed_and_skipped_or_strict(tmp_path, capsys):
    photos = write_dataset(tmp_path / "photos", per_class=6)
    (photos / "red" / "notes.txt").write_text("not an image")
    good = (photos / "red" / "red_00.jpg").read_bytes()
    (photos / "red" / "half.jpg").write_bytes(good[: len(good) // 2])
    (photos / "red" / ".hidden.jpg").write_bytes(b"junk")
    ds = data.build(photos, tmp_path / "run", cfg())
    skipped = {s["path"]: s["reason"] for s in ds.skipped}
    assert set(skipped) == {"red/notes.txt", "red/half.jpg"}
    assert "not an image" in skipped["red/notes.txt"] and "truncated" in skipped["red/half.jpg"]
    err = capsys.readouterr().err
    assert "red/notes.txt" in err and "2 file(s) skipped" in err
    with pytest.raises(EdgetlError, match="unreadable"):
        data.build(photos, tmp_path / "run_strict", cfg(strict=True))


def test_many_formats_in_one_dataset(tmp_path):
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (photos / c).mkdir(parents=True)
        for i, (fmt, mode) in enumerate([("PNG", "RGBA"), ("PNG", "P"), ("BMP", "RGB"), ("GIF", "P"),
                                        ("WEBP", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "I;16")]):
            rgb = colour_image("red" if c == "a" else "blue", rng)
            im = Image.fromarray(rgb)
            im = im.convert("RGBA") if mode == "RGBA" else im.convert(mode) if mode in ("P", "L", "CMYK") else im
            if mode == "I;16":
                im = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
            im.save(photos / c / f"{i}.img", fmt)
    ds = data.build(photos, tmp_path / "run", cfg(split=[0.5, 0.25, 0.25]))
    assert not ds.skipped and sum(sum(v.values()) for v in ds.counts().values()) == 16


@pytest.mark.parametrize("case,message", [
    ("one_class", "only one class"),
    ("empty_class", "is empty"),
    ("too_few", "needs at least 3"),
    ("no_classes", "no class folders"),
    ("missing", "not found"),
    ("all_bad", "no readable photo"),
    ("val_mismatch", "class folders differ"),
])
def test_bad_datasets(tmp_path, case, message):
    root = tmp_path / "d"
    if case == "one_class":
        write_dataset(root, classes=("red",), per_class=5)
    elif case == "empty_class":
        write_dataset(root, per_class=5)
        (root / "yellow").mkdir()
    elif case == "too_few":
        write_dataset(root, per_class=5)
        for f in sorted((root / "red").iterdir())[2:]:
            f.unlink()
    elif case == "no_classes":
        root.mkdir()
    elif case == "missing":
        root = tmp_path / "nope"
    elif case == "all_bad":
        write_dataset(root, per_class=5)
        for f in (root / "red").iterdir():
            f.write_bytes(b"garbage")
    elif case == "val_mismatch":
        write_dataset(root / "train", per_class=4)
        write_dataset(root / "val", classes=("blue", "green"), per_class=2)
    with pytest.raises(EdgetlError, match=message) as e:
        data.build(root, tmp_path / "run", cfg())
    assert e.value.exit_code == 2 and e.value.hint


def test_warns_on_imbalance_and_duplicates_across_splits(tmp_path, capsys):
    root = tmp_path / "d"
    write_dataset(root / "train", classes=("blue", "red"), per_class=12)
    write_dataset(root / "val", classes=("blue", "red"), per_class=3, seed=9)
    for f in sorted((root / "train" / "red").iterdir())[3:]:
        f.unlink()  # 12 blue vs 3 red
    shutil.copy(root / "train" / "blue" / "blue_00.jpg", root / "val" / "blue" / "copy.jpg")
    ds = data.build(root, tmp_path / "run", cfg())
    err = capsys.readouterr().err
    assert "class imbalance" in err and "identical file" in err
    assert "train/blue/blue_00.jpg (train)  ==  val/blue/copy.jpg (val)" in err
    assert len(ds.notes) >= 2


def test_augment_is_deterministic_and_changes_pixels():
    img = colour_image("red", np.random.default_rng(1), (96, 96))
    a = data.augment(img, np.random.default_rng(7))
    b = data.augment(img, np.random.default_rng(7))
    c = data.augment(img, np.random.default_rng(8))
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, img)
