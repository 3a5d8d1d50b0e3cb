"""The runtime against hostile model files and special files (issue 12): models that kill the native
interpreter, models that declare runaway tensors, FIFOs and devices where a model, a label file or a cache
should be, container images that hide a huge picture, a swapped model in a run, closed pipes, and native
chatter. Every case is a real file (crafted by patching the bytes of a real model edgetl wrote, see
tests/model_bytes.py) through a real `edgetl` process, its exit status and peak memory read with wait4.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import model_bytes as mb
import numpy as np
import pytest
from conftest import colour_image, requires_tf

CLI = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
BARE = """import sys, numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_content=open(sys.argv[1], 'rb').read())
it.allocate_tensors()
for d in it.get_input_details():
    it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype']))
it.invoke()
"""


PEAK = ("import atexit, os\n"
        "def _peak():\n"
        "    with open(os.environ['EDGETL_TEST_PEAK'], 'w') as f:\n"
        "        f.write(open('/proc/self/status').read())\n"
        "atexit.register(_peak)\n")


def run(*args, env=None, timeout=120, code=CLI, stdin=None):
    """(returncode, stdout, stderr, peak MB) of `edgetl ARGS` (or ``code``) in a fresh process. The peak is
    the process's own VmHWM at exit (children excluded; 0 if it did not exit normally). A process still
    running after ``timeout`` seconds is killed and the test fails: nothing may hang."""
    import tempfile

    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    fd, peak_file = tempfile.mkstemp(prefix="edgetl-peak-")
    os.close(fd)
    e["EDGETL_TEST_PEAK"] = peak_file
    p = subprocess.Popen([sys.executable, "-c", PEAK + code, *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=stdin if stdin is not None else subprocess.DEVNULL, env=e)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((p.stdout, out), (p.stderr, err))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, _ = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            os.wait4(p.pid, 0)
            pytest.fail(f"edgetl {' '.join(map(str, args))} hung (killed after {timeout} s)")
        time.sleep(0.01)
    for t in readers:
        t.join(10)
    p.returncode = os.waitstatus_to_exitcode(status)
    text = Path(peak_file).read_text()
    os.unlink(peak_file)
    hwm = [ln.split()[1] for ln in text.splitlines() if ln.startswith("VmHWM:")]
    return (p.returncode, out[0].decode("utf-8", "replace") if out else "",
            err[0].decode("utf-8", "replace") if err else "", int(hwm[0]) / 1024.0 if hwm else 0.0)


def assert_user_error(rc, err, *phrases):
    assert rc == 2, (rc, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    hints = [ln for ln in err.splitlines() if ln.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, err[-3000:]
    for ph in phrases:
        assert ph in errors[0] or ph in hints[0], (ph, err[-3000:])


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    p = tmp_path / "photo.jpg"
    Image.fromarray(colour_image("red", np.random.default_rng(0), (80, 100))).save(p)
    return p


@pytest.fixture
def model(test_models):
    return (test_models / "edgetl_uint8.tflite").read_bytes()


def bare_signal(path) -> str | None:
    """The signal that kills an unprotected interpreter (create, allocate, invoke) on ``path``, or None."""
    import resource

    def limits():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    r = subprocess.run([sys.executable, "-c", BARE, str(path)], capture_output=True, preexec_fn=limits, timeout=120)
    return signal.Signals(-r.returncode).name if r.returncode < 0 else None


# ------------------------------------------------------------------ 1. models that kill the interpreter


def test_models_that_crash_the_interpreter_are_an_error_not_a_dead_process(model, cache_dir, photo, tmp_path):
    """A changed input zero point (SIGSEGV in LiteRT's allocate_tensors) and broken tensor vtables (SIGABRT):
    an unprotected interpreter dies of a signal; `info`, `predict` and the Python API say so in one error line
    (exit 2) and live. The zero point is refused from the flatbuffer already (outside the uint8 range); the
    vtables pass every structural check and are caught by the first load in a child process."""
    flat, _ = mb.split_model(model)
    vt = mb.tensor_vtable(flat)
    short_vtable = bytearray(model)
    short_vtable[vt : vt + 2] = (8).to_bytes(2, "little")  # the tensors' vtable: only shape and type left
    crafted = {
        "zero-point": mb.with_input_zero_point(model, -1000),
        "no-quantization": mb.with_tensor_vtable_slot(model, 4, 0),
        "short-vtable": bytes(short_vtable),
    }
    killed = {}
    for name, blob in crafted.items():
        p = tmp_path / f"{name}.tflite"
        p.write_bytes(blob)
        sig = bare_signal(p)
        if sig:
            killed[name] = (p, sig)
    assert {"no-quantization", "short-vtable"} <= set(killed), killed  # SIGABRT in LiteRT and tflite-runtime
    for name, (p, sig) in killed.items():
        said = ("zero point -1000, outside the uint8 range" if name == "zero-point" else
                f"the interpreter crashed on this model (signal {sig})")
        for args in (["info", p], ["predict", p, photo], ["predict", p, photo, "--json"]):
            rc, out, err, _ = run(*args)
            assert_user_error(rc, err, said, str(p))
            assert out == ""
        api = (f"from edge_runtime import Classifier, EdgetlError\n"
               f"try:\n    Classifier({str(p)!r})\nexcept EdgetlError as e:\n    print('refused:', e)")
        rc, out, err, _ = run(code=api)
        assert rc == 0 and f"refused: {p}: " in out and said in out, err
    assert not list(Path.cwd().glob("core*")) and not list(tmp_path.glob("core*"))


def test_a_good_verdict_is_remembered_and_a_damaged_cache_is_ignored(test_models, cache_dir, photo):
    """The first untrusted load probes the model once; its verdict is kept per SHA-256 and backend in
    probes.json, written atomically. A cache file that is garbage, a named pipe or a link to /dev/zero is
    ignored (no hang, no runaway read) and replaced."""
    m = test_models / "edgetl_uint8.tflite"
    sha = hashlib.sha256(m.read_bytes()).hexdigest()
    rc, _, err, _ = run("info", m)
    assert rc == 0, err
    verdicts = json.loads((cache_dir / "probes.json").read_text())["verdicts"]
    (key,) = [k for k in verdicts if k.startswith(sha + ":")]
    assert verdicts[key]["ok"] is True
    for damage in ("garbage", "fifo", "zero"):
        (cache_dir / "probes.json").unlink()
        if damage == "garbage":
            (cache_dir / "probes.json").write_bytes(b"\xff{[[")
        elif damage == "fifo":
            os.mkfifo(cache_dir / "probes.json")
        else:
            os.symlink("/dev/zero", cache_dir / "probes.json")
        rc, out, err, peak = run("predict", m, photo, timeout=60)
        assert rc == 0 and "red" in out, err[-2000:]
        assert 0 < peak < 500, peak
        assert (cache_dir / "probes.json").is_file() and not (cache_dir / "probes.json").is_symlink()
        assert json.loads((cache_dir / "probes.json").read_text())["verdicts"][key]["ok"] is True


def test_trusted_loads_skip_the_probe_and_untrusted_ones_do_not(test_models, cache_dir):
    """model.load(trusted=True), for what edgetl itself just wrote, starts no child process; the default
    does (it leaves its verdict in the cache_dir)."""
    code = ("import sys\nfrom edge_runtime import model\n"
            "m = model.load(sys.argv[1], num_threads=1, trusted=sys.argv[2] == 'yes')\nprint(m.output.shape)")
    rc, out, err, _ = run(test_models / "edgetl_float32.tflite", "yes", code=code)
    assert rc == 0 and "3" in out, err
    assert not (cache_dir / "probes.json").exists()
    rc, out, err, _ = run(test_models / "edgetl_float32.tflite", "no", code=code)
    assert rc == 0, err
    assert (cache_dir / "probes.json").is_file()


def test_the_probe_child_is_memory_limited_even_when_the_shapes_lie(model, tmp_path):
    """The child that tries a model may allocate what the model's tensors declare (twice, plus a margin),
    no more (RLIMIT_AS; Linux): told that a model declaring a 9.6 GB activation declares nothing, LiteRT
    fails within the limit instead of allocating the 9.4 GB it takes unprotected (tflite-runtime 2.14
    recomputes the shape and needs nothing); either way the child stays under its limit."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/statm: Linux")
    from edge_runtime import backends, probe

    be = backends.resolve()
    blob = mb.with_tensor_shape(model, [1, 12, 16580620, 48])
    with probe.Prober(be.name) as p:
        v = p.probe(blob, 0)
        assert v.limit == probe.budget(len(blob), 0)
        if be.name == "ai_edge_litert":
            assert not v.ok and (v.stage == "allocate" or v.memory or v.crashed), v
        assert p.probe(model, 0).ok  # the real model fits in the same child
    assert 0 < p.peak_child_rss_mb < probe.budget(len(blob), 0) / 2**20 + 300, p.peak_child_rss_mb


# ------------------------------------------------------------------ 2. what a model may allocate


def test_a_model_declaring_a_runaway_tensor_is_refused_before_allocating(model, cache_dir, photo, tmp_path):
    """Two mutated shape bytes make one activation [1, 12, 16580620, 48] (9.6 GB; unprotected, LiteRT's
    `info` peaked at 9.4 GB): refused from the flatbuffer, naming the tensor and the bound, in well under a
    second of work and a few dozen MB."""
    p = tmp_path / "runaway.tflite"
    p.write_bytes(mb.with_tensor_shape(model, [1, 12, 16580620, 48]))
    for args in (["info", p], ["predict", p, photo]):
        rc, _, err, peak = run(*args, timeout=60)
        assert_user_error(rc, err, "declares [1, 12, 16580620, 48] int8 = 9.6 GB", "at most 2.1 GB",
                          "EDGETL_MAX_TENSOR_BYTES")
        assert 0 < peak < 400, peak
    # an input that large too (tflite-runtime 2.14 died of std::bad_alloc with a traceback)
    p.write_bytes(mb.with_input_shape(model, [1, 96, 16580620, 3], [1, 96, 16580620, 3]))
    rc, _, err, peak = run("info", p, timeout=60)
    assert_user_error(rc, err, "declares [1, 96, 16580620, 3] uint8")
    assert 0 < peak < 400, peak


# ------------------------------------------------------------------ 3. special files


@pytest.fixture
def fake_run(test_models, tmp_path):
    """A run folder as edgetl writes it for the runtime: two models that passed parity, their SHA-256
    recorded in report.json."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tfl = {}
    for mode, src in (("int8", "edgetl_uint8.tflite"), ("float32", "edgetl_float32.tflite")):
        data = (test_models / src).read_bytes()
        (run_dir / f"model_{mode}.tflite").write_bytes(data)
        tfl[mode] = {"path": f"model_{mode}.tflite", "passed": True, "reason": None, "agreement": 0.99,
                     "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run_dir / "report.json").write_text(json.dumps({"tflite": tfl}))
    (run_dir / ".edgetl-run").write_text("{}")
    return run_dir


def test_special_files_where_the_runtime_reads(test_models, cache_dir, photo, fake_run, tmp_path):
    """A model path linked to /dev/zero or /dev/urandom, a named pipe as the model, the label file or the
    device-choice cache_dir, /dev/zero as the cache: each is refused (or, for the cache_dir, ignored) at once, with a
    reason, never read (unprotected: 15 GB in 20 s from /dev/zero, a hang on a pipe)."""
    zero, rand, fifo = tmp_path / "zero.tflite", tmp_path / "rand.tflite", tmp_path / "fifo.tflite"
    os.symlink("/dev/zero", zero)
    os.symlink("/dev/urandom", rand)
    os.mkfifo(fifo)
    for args, phrase in ((["info", zero], "not a regular file (character device)"),
                         (["predict", zero, photo], "not a regular file (character device)"),
                         (["bench", rand, "--runs", "1", "--warmup", "0"], "not a regular file (character device)"),
                         (["bench", "/dev/urandom", "--runs", "1"], "not a regular file (character device)"),
                         (["info", fifo], "not a regular file (named pipe)"),
                         (["predict", fifo, photo], "not a regular file (named pipe)"),
                         (["predict", test_models / "edgetl_uint8.tflite", photo, "--labels", fifo],
                          "not a regular file (named pipe)"),
                         (["predict", test_models / "edgetl_uint8.tflite", photo, "--labels", zero],
                          "not a regular file (character device)")):
        rc, _, err, peak = run(*args, timeout=60)
        assert_user_error(rc, err, phrase)
        assert 0 < peak < 400, (args, peak)
    # the device-choice cache (and the probe cache beside it) as a named pipe, then as /dev/zero
    for kind in ("fifo", "zero"):
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir()
        for name in ("choices.json", "probes.json"):
            if kind == "fifo":
                os.mkfifo(cache_dir / name)
            else:
                os.symlink("/dev/zero", cache_dir / name)
        rc, out, err, peak = run("predict", fake_run, photo, timeout=300)
        assert rc == 0 and "red" in out, err[-2000:]
        assert 0 < peak < 500, peak
        assert "measuring the models of" in err
        assert json.loads((cache_dir / "choices.json").read_text())["choices"]  # replaced by a real cache file


# ------------------------------------------------------------------ 4. images that hide a larger one


def _png_bomb(w: int, h: int) -> bytes:
    """A gray PNG of w x h zero pixels, compressed as it streams (small file, never in memory whole)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    c = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    body = b"".join(c.compress(row) for _ in range(h)) + c.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_containers_are_checked_before_decoding(test_models, cache_dir, tmp_path):
    """An ICO whose directory says 16 x 16 but whose entry is a 13300 x 13300 PNG (177 MP), and an ICNS
    entry holding the same: refused from the embedded image's own header before Pillow decodes it (Pillow's
    ICO plugin decodes the largest entry inside Image.open); a real ICO and ICNS still classify."""
    import struct

    from PIL import Image

    bomb = _png_bomb(13300, 13300)
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(bomb), 22) + bomb
    icns_body = b"ic10" + struct.pack(">I", len(bomb) + 8) + bomb
    icns = b"icns" + struct.pack(">I", len(icns_body) + 8) + icns_body
    (tmp_path / "bomb.ico").write_bytes(ico)
    (tmp_path / "bomb.icns").write_bytes(icns)
    m = test_models / "edgetl_uint8.tflite"
    for name, phrase in (("bomb.ico", "the ICO file declares 16 x 16 but holds an image of 13300 x 13300 = 177 "
                                      "megapixels"),
                         ("bomb.icns", "the ICNS file holds an image of 13300 x 13300 = 177 megapixels")):
        rc, _, err, peak = run("predict", m, tmp_path / name, timeout=60)
        assert rc == 2 and f"failed: {tmp_path / name}: image too large: {phrase}" in err, err[-2000:]
        assert 0 < peak < 150, peak  # unprotected: 240 MB (gray) to 762 MB (RGBA) decoded first
    good = Image.fromarray(colour_image("red", np.random.default_rng(1), (64, 64)))
    good.save(tmp_path / "good.ico", sizes=[(16, 16), (64, 64)])
    good.save(tmp_path / "good.icns")
    rc, out, err, _ = run("predict", m, tmp_path / "good.ico", tmp_path / "good.icns", "--json", timeout=60)
    assert rc == 0 and [json.loads(x)["label"] for x in out.splitlines()] == ["red", "red"], err[-2000:]


# ------------------------------------------------------------------ 5. tracebacks and exit codes


def test_thread_counts_beyond_reason_are_a_usage_error(test_models, photo):
    m = test_models / "edgetl_uint8.tflite"
    for args in (["predict", m, photo, "--threads", "2147483648"], ["camera", m, "--headless", "--threads", "99999"],
                 ["bench", m, "--threads", "1,2147483648", "--runs", "1"]):
        rc, _, err, _ = run(*args, timeout=60)
        assert_user_error(rc, err, "--threads", "1024")


def test_a_fixed_batch_model_classifies_any_number_of_images(model, cache_dir, tmp_path):
    """A model whose batch is fixed at 2 (unprotected: RecursionError in Classifier._run): images go in
    batches of two, the last one padded; each gets its own scores."""
    p = tmp_path / "batch2.tflite"
    p.write_bytes(mb.with_input_shape(model, [2, 96, 96, 3], [2, 96, 96, 3]))
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, c in enumerate(("red", "green", "blue")):
        Image.fromarray(colour_image(c, np.random.default_rng(i), (80, 100))).save(photos / f"{i}_{c}.jpg")
    rc, out, err, _ = run("predict", p, photos, "--json", timeout=60)
    assert rc == 0, err[-2000:]
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 3 and all(len(r["top_k"]) == 3 for r in rows)
    one = tmp_path / "batch1.tflite"
    one.write_bytes(model)
    rc, out1, err, _ = run("predict", one, photos, "--json", timeout=60)
    assert rc == 0 and [json.loads(x)["label"] for x in out1.splitlines()] == [r["label"] for r in rows], err


def test_models_that_fail_when_invoked_or_have_no_outputs(model, cache_dir, photo, tmp_path):
    """A weight tensor pointed at an empty buffer ("Input tensor N lacks data" when invoked) and a model
    with zero outputs: one error line each, exit 2; `info` still describes the first (it prepares)."""
    from edge_runtime import tflite_format

    spans = tflite_format.parse_model(model)["buffer_spans"]

    def weights(info):
        b = info["buffer"]
        return 0 < b < len(spans) and spans[b][1] > 0 and len(info["shape"]) == 4

    p = tmp_path / "lacks.tflite"
    p.write_bytes(mb.with_buffer_index(model, weights, 0))
    rc, _, err, _ = run("info", p)
    assert rc == 0 and "warning: the interpreter prepared this model but failed to run it" in err, err[-2000:]
    rc, _, err, _ = run("predict", p, photo)
    assert_user_error(rc, err, "the interpreter failed to run the model", "lacks data")
    p = tmp_path / "no-outputs.tflite"
    p.write_bytes(mb.with_subgraph_outputs(model, 0))
    for args in (["info", p], ["predict", p, photo]):
        rc, _, err, _ = run(*args)
        assert_user_error(rc, err, "the model has no outputs")


def test_a_closed_pipe_is_a_normal_end(test_models, cache_dir, tmp_path):
    """`predict ... --json | head -1`, `--csv | head -1` and `camera --headless | head -1` through a real
    pipe: exit 0, nothing on stderr but edgetl's own lines (Click turned EPIPE into exit 1)."""
    import cv2
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(colour_image("red", np.random.default_rng(0), (40, 50))).save(photos / "a.jpg")
    for i in range(1, 300):
        shutil.copy(photos / "a.jpg", photos / f"{i:03d}.jpg")
    video = tmp_path / "v.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not vw.isOpened():
        pytest.skip("this OpenCV cannot write a video")
    frame = cv2.cvtColor(colour_image("green", np.random.default_rng(1), (48, 64)), cv2.COLOR_RGB2BGR)
    for _ in range(400):
        vw.write(frame)
    vw.release()
    m = test_models / "edgetl_uint8.tflite"
    run("info", m)  # the probe once, so that every case below starts writing at once
    for args in (["predict", m, photos, "--json"], ["predict", m, photos, "--csv"],
                 ["camera", m, "--source", video, "--headless"]):
        cmd = " ".join(f"'{a}'" for a in [sys.executable, "-c", CLI, *map(str, args)])
        r = subprocess.run(["bash", "-c", f"{cmd} 2>{tmp_path / 'err'} | head -1 >{tmp_path / 'out'}; "
                                          "exit ${PIPESTATUS[0]}"], timeout=300)
        err = (tmp_path / "err").read_text()
        assert r.returncode == 0, (args, r.returncode, err[-2000:])
        assert "Traceback" not in err and "error:" not in err and "Exception" not in err, err[-2000:]
        assert len((tmp_path / "out").read_text().splitlines()) == 1


# ------------------------------------------------------------------ 6. messages


@requires_tf
def test_a_model_with_a_dynamic_input_size_says_so(tmp_path, cache_dir, photo):
    """A converter's model with a dynamic height and width (shape [1, 1, 1, 3], signature [-1, -1, -1, 3]):
    not "try another --backend", but what it is; the same for a patched edgetl model (which would otherwise
    run on a 1 x 1 picture)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolchain.core import convert
    from toolchain.core import modeling

    keras = modeling.import_keras()[1]
    m = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(3, activation="softmax")])
    p = tmp_path / "dynamic.tflite"
    p.write_bytes(convert.convert(m, "float32"))
    for args in (["info", p], ["predict", p, photo, "--input-range", "0,1"]):
        rc, _, err, _ = run(*args)
        assert_user_error(rc, err, "has a dynamic input size", "fixed input size")
        assert "--backend" not in err


def test_patched_dynamic_size_and_empty_camera_source(model, cache_dir, photo, tmp_path):
    p = tmp_path / "dynamic.tflite"
    p.write_bytes(mb.with_input_shape(model, [1, 1, 1, 3], [-1, -1, -1, 3]))
    rc, _, err, _ = run("predict", p, photo)
    assert_user_error(rc, err, "has a dynamic input size", "[-1, -1, -1, 3]")
    rc, _, err, _ = run("camera", tmp_path / "dynamic.tflite", "--source", "", "--headless")
    assert_user_error(rc, err)  # the model is refused first
    good = tmp_path / "good.tflite"
    good.write_bytes(model)
    rc, _, err, _ = run("camera", good, "--source", "", "--headless")
    assert_user_error(rc, err, "the video source is empty")
    assert "is a folder" not in err


def test_native_chatter_never_comes_before_edgetls_own_lines(test_models, cache_dir, tmp_path):
    """What FFmpeg/OpenCV and libtiff print on stderr ("[mov,mp4,...] moov atom not found", "LZWDecode: Not
    enough data at scanline 0") is held back: stderr holds only edgetl's lines; a failed file's line may end
    with the decoder's last word."""
    import random

    from PIL import Image

    m = test_models / "edgetl_uint8.tflite"
    (tmp_path / "notvideo.mp4").write_text("hello\n")
    rc, _, err, _ = run("camera", m, "--source", tmp_path / "notvideo.mp4", "--headless")
    assert_user_error(rc, err, "not a video OpenCV can decode")
    assert len(err.splitlines()) == 2, err
    # damaged LZW TIFFs: libtiff writes its complaints straight to stderr
    tifs = tmp_path / "tifs"
    tifs.mkdir()
    Image.fromarray(colour_image("red", np.random.default_rng(0), (40, 40))).save(tifs / "good.tif",
                                                                                   compression="tiff_lzw")
    data = (tifs / "good.tif").read_bytes()
    rng = random.Random(3)
    for k in range(40):
        b = bytearray(data)
        for _ in range(3):
            b[rng.randrange(len(b))] = rng.randrange(256)
        (tifs / f"bad{k:02d}.tif").write_bytes(bytes(b))
    chatty = subprocess.run([sys.executable, "-c", "import sys, glob\nfrom PIL import Image\n"
                             "for f in sorted(glob.glob(sys.argv[1] + '/*.tif')):\n"
                             "    try:\n        Image.open(f).load()\n    except Exception:\n        pass",
                             str(tifs)], capture_output=True, text=True)
    if not chatty.stderr.strip():
        pytest.skip("this Pillow's libtiff prints nothing for these files")
    rc, _, err, _ = run("predict", m, tifs)
    assert rc == 2, err[-2000:]
    stray = [ln for ln in err.splitlines() if not ln.startswith(("failed: ", "skipped: ", "error: ", "hint: ",
                                                                 "warning: "))]
    assert stray == [], stray[:5]
    assert "(the decoder said: " in err  # where it helps: the failed file's own line


# ------------------------------------------------------------------ 7. a swapped model in a run


def test_a_swapped_model_is_not_trusted_as_passed(fake_run, cache_dir, photo):
    """`cp model_int8.tflite model_float32.tflite`: the file's SHA-256 no longer matches the one recorded
    with its parity result. --mode float32 uses it with a warning saying so; the automatic choice leaves it
    out (with that warning); a run whose every model was swapped has none that passed."""
    shutil.copy(fake_run / "model_int8.tflite", fake_run / "model_float32.tflite")
    rc, out, err, _ = run("predict", fake_run, photo, "--mode", "float32")
    assert rc == 0 and "red" in out, err[-2000:]
    assert "warning: model_float32.tflite is not the model that passed parity: its SHA-256 differs" in err
    rc, out, err, _ = run("predict", fake_run, photo)
    assert rc == 0, err[-2000:]
    assert "model_float32.tflite is not the model that passed parity" in err and "left out of the choice" in err
    assert "using model_int8.tflite" in err
    rep = json.loads((fake_run / "report.json").read_text())
    rep["tflite"]["int8"]["sha256"] = "0" * 64
    (fake_run / "report.json").write_text(json.dumps(rep))
    rc, _, err, _ = run("predict", fake_run, photo)
    assert_user_error(rc, err, "passed its parity gate", "--mode")
    from edge_runtime import Classifier, EdgetlError

    with pytest.warns(UserWarning, match="is not the model that passed parity"), pytest.raises(EdgetlError):
        Classifier.from_run(fake_run)


@requires_tf
def test_a_build_records_the_sha256_of_every_model(tiny_run):
    run_dir, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((run_dir / "report.json").read_text())
    for mode, r in rep["tflite"].items():
        assert r["sha256"] == hashlib.sha256((run_dir / r["path"]).read_bytes()).hexdigest(), mode
