#!/usr/bin/env bash
# Install and run every test, in environments of the suite's own (the Quickstart's .venv is never
# touched: nothing is installed into it, nothing is removed from it):
#   .venv-test            TensorFlow + ai-edge-litert + NumPy 2 + headless OpenCV 5 (training, conversion,
#                         runtime, CLI)
#   .venv-test-tflite     tflite-runtime 2.14 + NumPy 1 + OpenCV 4 with GUI, no TensorFlow, no ai-edge-litert
#                         (the runtime on an older device); TensorFlow-made test models come from the first one.
#   .venv-test-mediapipe  MediaPipe Tasks (tests/mediapipe/run.sh): edgetl's models in the consumer phones use.
# They are created on the first run and reused (and updated) afterwards; delete them to start afresh.
# Usage: bash tests/run.sh [pytest args]      (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-test
VENV_TFLITE=.venv-test-tflite
started=$SECONDS

echo "== environment 1: $VENV (TensorFlow, ai-edge-litert, NumPy 2)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# edgetl's OpenCV on Linux is the headless wheel; both wheels share one cv2/ folder, so an environment
# that holds the GUI one too starts its OpenCV afresh (the install below brings the headless one back)
if "$VENV/bin/python" -m pip show -q opencv-python >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall -y -q opencv-python opencv-python-headless
fi
"$VENV/bin/python" -m pip install -q -e ".[train,dev]"
# tflite-runtime 2.14 beside NumPy 2: the runtime must refuse it with a reason instead of crashing
"$VENV/bin/python" -m pip install -q "tflite-runtime==2.14.*" 2>/dev/null || echo "(tflite-runtime has no wheel here; that check is skipped)"

models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
"$VENV/bin/python" tests/make_test_models.py "$models" >/dev/null
EDGETL_TEST_MODELS="$models" "$VENV/bin/python" -m pytest "$@"
echo "== environment 1 done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"

echo "== environment 2: $VENV_TFLITE (tflite-runtime 2.14, NumPy 1, OpenCV 4, no TensorFlow)"
[ -x "$VENV_TFLITE/bin/python" ] || "$PY" -m venv "$VENV_TFLITE"
"$VENV_TFLITE/bin/python" -m pip install -q --upgrade pip
"$VENV_TFLITE/bin/python" -m pip install -q "numpy<2" "tflite-runtime==2.14.*" opencv-python pillow typer pytest hypothesis
"$VENV_TFLITE/bin/python" -m pip install -q --no-deps --force-reinstall .
"$VENV_TFLITE/bin/python" - <<'PY'
import importlib.util, numpy, cv2
assert importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("ai_edge_litert") is None
print(f"numpy {numpy.__version__}, opencv {cv2.__version__}, tflite_runtime only")
PY
# run from a folder outside the checkout, so the installed package (not the source tree) is tested
(cd tests && EDGETL_TEST_MODELS="$models" "../$VENV_TFLITE/bin/python" -m pytest -c ../pyproject.toml --rootdir .. -p no:cacheprovider . "$@")
echo "== environment 2 done; $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s in all"

EDGETL_TEST_MODELS="$models" bash tests/mediapipe/run.sh
echo "== all tests done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
