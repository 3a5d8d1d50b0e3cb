#!/usr/bin/env bash
# Install and run every test, in two environments:
#   .venv          TensorFlow + ai-edge-litert + NumPy 2 + headless OpenCV (training, conversion, runtime, CLI)
#   .venv-tflite   tflite-runtime 2.14 + NumPy 1 + OpenCV 4 with GUI, no TensorFlow, no ai-edge-litert (the runtime
#                  on an older device); TensorFlow-made test models come from the first environment.
# Usage: bash tests/run.sh [pytest args]      (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== environment 1: .venv (TensorFlow, ai-edge-litert, NumPy 2)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# edgetl's OpenCV on Linux is the headless wheel; a .venv made before holds opencv-python too, and both
# share one cv2/ folder: start that OpenCV afresh (the install below brings the headless one back)
if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -y -q opencv-python opencv-python-headless
fi
.venv/bin/python -m pip install -q -e ".[train,dev]"
# tflite-runtime 2.14 beside NumPy 2: the runtime must refuse it with a reason instead of crashing
.venv/bin/python -m pip install -q "tflite-runtime==2.14.*" 2>/dev/null || echo "(tflite-runtime has no wheel here; that check is skipped)"

models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
.venv/bin/python tests/make_test_models.py "$models" >/dev/null
EDGETL_TEST_MODELS="$models" .venv/bin/python -m pytest "$@"

echo "== environment 2: .venv-tflite (tflite-runtime 2.14, NumPy 1, OpenCV 4, no TensorFlow)"
[ -x .venv-tflite/bin/python ] || "$PY" -m venv .venv-tflite
.venv-tflite/bin/python -m pip install -q --upgrade pip
.venv-tflite/bin/python -m pip install -q "numpy<2" "tflite-runtime==2.14.*" opencv-python pillow typer pytest hypothesis
.venv-tflite/bin/python -m pip install -q --no-deps --force-reinstall .
.venv-tflite/bin/python - <<'PY'
import importlib.util, numpy, cv2
assert importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("ai_edge_litert") is None
print(f"numpy {numpy.__version__}, opencv {cv2.__version__}, tflite_runtime only")
PY
# run from a folder outside the checkout, so the installed package (not the source tree) is tested
(cd tests && EDGETL_TEST_MODELS="$models" ../.venv-tflite/bin/python -m pytest -c ../pyproject.toml --rootdir .. -p no:cacheprovider . "$@")
EDGETL_TEST_MODELS="$models" bash tests/mediapipe/run.sh
