"""tflite-runtime 2.14 (the armhf / older-device interpreter) against ai-edge-litert, on a real run.

    python benchmarks/bench_tflite_runtime.py RUN [--tflite-python PY] [--load RUN2 ...]

RUN is an `edgetl build` of flowers10 (default options: model.keras and model_int8.tflite, e.g. made by
benchmarks/bench_consumers.py). Every photo of the run's data folder is fitted once with the run's policy
(the exact tensors parity uses) and given to both interpreters:

1. **Dynamic-range conversion**: model.keras converted as edgetl did before (per-channel dense weights,
   FULLY_CONNECTED version 12, min_runtime_version 2.17) and as it does now (per-tensor dense weights,
   ``_experimental_disable_per_channel_quantization_for_dense_layers``): operator versions, the runtime
   version the converter records, size, accuracy and agreement with Keras over every photo (and the test
   split), and whether tflite-runtime 2.14 loads each.
2. **int8 kernels**: RUN/model_int8.tflite on identical uint8 tensors in ai-edge-litert (this environment)
   and tflite-runtime 2.14 (``--tflite-python``, an environment with tflite-runtime 2.14 and NumPy < 2):
   largest and mean difference of the raw uint8 outputs (in output steps of 1/256), share of photos whose
   outputs differ at all, top-1 agreement between the interpreters, and each one's agreement with Keras.
   float32 for comparison.
3. **Loading**: every model_*.tflite of RUN and of each ``--load`` run, opened by edge_runtime under
   tflite-runtime 2.14 and asked to classify one photo (and by the Task Library 0.4.4's ImageClassifier when
   ``--tasklib-python`` exists); then ``edgetl predict RUN`` there (the device choice, cached in a temporary
   folder).
Needs TensorFlow (this environment) and ../shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT

TFLITE_PY = Path("/work/venv-consumers-tflite/bin/python")
TASKLIB_PY = Path("/work/venv-tflite-support/bin/python")

RAW = r'''
import sys, numpy as np
from tflite_runtime.interpreter import Interpreter
x = np.load(sys.argv[2])
out = []
it = Interpreter(model_path=sys.argv[1], num_threads=2)
it.allocate_tensors()
i, o = it.get_input_details()[0], it.get_output_details()[0]
for t in x:
    it.set_tensor(i["index"], t[None].astype(i["dtype"]))
    it.invoke()
    out.append(it.get_tensor(o["index"])[0].copy())
np.save(sys.argv[3], np.stack(out))
'''

TASKLIB = r'''
import json, sys, numpy as np
from PIL import Image
from tflite_support.task import core, vision
img = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
res = {}
for path in sys.argv[2:]:
    try:
        c = vision.ImageClassifier.create_from_options(
            vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=path)))
        top = c.classify(vision.TensorImage.create_from_array(img)).classifications[0].categories[0]
        res[path] = f"ok: {top.category_name} {top.score:.3f}"
    except Exception as e:
        res[path] = f"FAILED: {str(e).splitlines()[0][:160]}"
print(json.dumps(res))
'''

LOADS = r'''
import json, sys, warnings
warnings.simplefilter("ignore")
from edge_runtime import Classifier, backends
res = {"backend": str(backends.resolve())}
for path in sys.argv[2:]:
    try:
        clf = Classifier(path, num_threads=2)
        p = clf.classify_path(sys.argv[1], top_k=1)[0]
        res[path] = f"ok: {p.label} {p.score:.3f}"
    except Exception as e:
        res[path] = f"FAILED: {str(e).splitlines()[0][:160]}"
print(json.dumps(res))
'''


def op_versions(flat: bytes) -> dict:
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(bytearray(flat), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    ops = {names.get(max(o.builtinCode, o.deprecatedBuiltinCode), "?"): o.version for o in model.operatorCodes}
    md = {(e.name.decode() if isinstance(e.name, bytes) else e.name): e.buffer for e in model.metadata or []}
    rt = None
    if "min_runtime_version" in md:
        rt = bytes(model.buffers[md["min_runtime_version"]].data).rstrip(b"\0").decode()
    return {"ops": ops, "min_runtime_version": rt}


def tflite_raw(py: Path, model: Path, tensors, tmp: Path):
    import numpy as np

    xin, xout = tmp / "x.npy", tmp / "y.npy"
    np.save(xin, tensors)
    r = subprocess.run([str(py), "-c", RAW, str(model), str(xin), str(xout)], capture_output=True, text=True,
                       check=False, timeout=3600)
    if r.returncode:
        return None, (r.stderr.strip().splitlines() or ["?"])[-1][:200]
    return np.load(xout), None


def litert_raw(model: Path, tensors):
    import numpy as np

    from edge_runtime import model as model_mod

    m = model_mod.load(model, num_threads=2)
    it, i, o = m.interpreter, m.input, m.output
    out = []
    for t in tensors:
        it.set_tensor(i.index, t[None].astype(i.dtype))
        it.invoke()
        out.append(it.get_tensor(o.index)[0].copy())
    return np.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--tflite-python", type=Path, default=TFLITE_PY)
    ap.add_argument("--tasklib-python", type=Path, default=TASKLIB_PY,
                    help="an environment with tflite-support 0.4.4 (the Task Library); skipped when missing")
    ap.add_argument("--load", type=Path, nargs="*", default=[], help="more runs whose models must load")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from edge_runtime import Classifier, preprocess
    from toolchain.core import convert
    from toolchain.core import metrics
    from toolchain.core import modeling
    from toolchain.core import parity
    from toolchain.core.quiet import silenced

    run = args.run
    split = json.loads((run / "split.json").read_text())
    data, classes, policy, size = Path(split["data_dir"]), split["classes"], split["resize"], split["image_size"]
    rows = [(rel, lab, part) for part, items in split["files"].items() for rel, lab in items]
    t0 = time.perf_counter()
    tensors = np.stack([preprocess.load_image(data / rel, (size, size), policy) for rel, _, _ in rows])
    y = np.array([lab for _, lab, _ in rows])
    test = np.array([part == ("val" if split.get("test_is_val") else "test") for _, _, part in rows])
    print(f"{len(rows)} photos of {data} fitted ({policy}, {size} px) in {time.perf_counter() - t0:.0f} s", flush=True)
    keras_model = modeling.load(run / "model.keras")
    p_keras = parity.keras_probabilities(keras_model, tensors, (0.0, 255.0))
    k_top = p_keras.argmax(1)
    print(f"Keras: accuracy {np.mean(k_top == y):.4f} (test {np.mean(k_top[test] == y[test]):.4f})")
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-bench-tflite-"))

    # 1. dynamic range, both ways
    tf = modeling.import_keras()[0]
    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    with silenced():  # the converter prints pages
        old = bytes(conv.convert())
    new = convert.convert(keras_model, "dynamic")
    print("\n1. dynamic-range model: per-channel dense weights (before) vs per-tensor dense weights (now)")
    print(f"{'recipe':22} {'FULLY_CONNECTED':>15} {'CONV_2D':>7} {'min runtime':>11} {'KB':>6} {'acc':>7} "
          f"{'test acc':>8} {'agree':>7} {'KL':>9}  tflite-runtime 2.14")
    for name, flat in (("per-channel (before)", old), ("per-tensor dense (now)", new)):
        path = tmp / f"dynamic_{name.split()[0]}.tflite"
        path.write_bytes(flat)
        clf = Classifier(path, num_threads=2, labels=classes, input_range=(0, 255), resize=policy, warn=False)
        p = parity.tflite_probabilities(clf, tensors)
        m = metrics.parity(p_keras, p, y)
        top = p.argmax(1)
        v = op_versions(flat)
        raw, err = tflite_raw(args.tflite_python, path, tensors[:1].astype(np.float32), tmp)
        print(f"{name:22} {v['ops'].get('FULLY_CONNECTED'):>15} {v['ops'].get('CONV_2D'):>7} "
              f"{v['min_runtime_version']:>11} {len(flat) / 1024:>6.0f} {np.mean(top == y):>7.4f} "
              f"{np.mean(top[test] == y[test]):>8.4f} {m['agreement']:>7.4f} {m['kl_mean']:>9.6f}  "
              f"{'loads' if raw is not None else 'refused: ' + err}")

    # 2. int8 kernels: the same uint8 tensors in both interpreters
    print("\n2. the same tensors in ai-edge-litert and tflite-runtime 2.14")
    for mode in ("int8", "float32"):
        model = run / f"model_{mode}.tflite"
        if not model.is_file():
            continue
        x = tensors if mode == "int8" else tensors.astype(np.float32)
        a = litert_raw(model, x)
        b, err = tflite_raw(args.tflite_python, model, x, tmp)
        if b is None:
            print(f"{mode}: tflite-runtime failed: {err}")
            continue
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        step = "steps of 1/256" if a.dtype == np.uint8 else "probability"
        ta, tb = a.argmax(1), b.argmax(1)
        print(f"{mode:8} max |diff| {d.max():.6g} ({step}), mean |diff| {d.mean():.4g}, photos with any difference "
              f"{np.mean(d.max(1) > 0):.4f}, top-1 litert=tflite-runtime {np.mean(ta == tb):.4f}; agreement with "
              f"Keras: litert {np.mean(ta == k_top):.4f}, tflite-runtime {np.mean(tb == k_top):.4f}; accuracy: "
              f"litert {np.mean(ta == y):.4f}, tflite-runtime {np.mean(tb == y):.4f} (n={len(y)})")

    # 3. every model of the runs loads and classifies under tflite-runtime 2.14
    print("\n3. edge_runtime under tflite-runtime 2.14: every model of the runs")
    env = dict(os.environ, PYTHONPATH=str(ROOT), EDGETL_CACHE_DIR=str(tmp))  # the device choice: not in ~/.cache
    photo = data / rows[0][0]
    for r in [run, *args.load]:
        models = sorted(str(p) for p in r.glob("model_*.tflite"))
        res = subprocess.run([str(args.tflite_python), "-c", LOADS, str(photo), *models], capture_output=True,
                             text=True, env=env, check=False, timeout=600)
        if res.returncode:
            print(f"{r}: failed: {res.stderr[-500:]}")
            continue
        out = json.loads(res.stdout.strip().splitlines()[-1])
        tl = {}
        if args.tasklib_python.exists():
            t = subprocess.run([str(args.tasklib_python), "-c", TASKLIB, str(photo), *models], capture_output=True,
                               text=True, check=False, timeout=600)
            tl = json.loads(t.stdout.strip().splitlines()[-1]) if t.returncode == 0 else {}
        for m in models:
            print(f"  {out['backend']}: {Path(r).name}/{Path(m).name}: {out[m]}"
                  + (f"; Task Library 0.4.4: {tl[m]}" if m in tl else ""))
        cli = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
        pr = subprocess.run([str(args.tflite_python), "-c", cli, "predict", str(r), str(photo), "--json"],
                            capture_output=True, text=True, env=env, check=False, timeout=900)
        last = (pr.stderr.strip().splitlines() or [""])[-1]
        print(f"  edgetl predict {Path(r).name} (device choice): exit {pr.returncode}; {pr.stdout.strip()[:100]}; "
              f"{last[:160]}")


if __name__ == "__main__":
    main()
