#!/usr/bin/env bash
# The MediaPipe Tasks tests, in their own environment .venv-test-mediapipe: mediapipe's wheel brings
# opencv-contrib-python, which cannot share an environment with the opencv-python of .venv (both install
# the cv2 package). Installs mediapipe, the project with --no-deps and what the runtime needs, then runs
# tests/mediapipe. Test models made by TensorFlow come from $EDGETL_TEST_MODELS (tests/make_test_models.py);
# without it they are made here with .venv's TensorFlow when there is one.
# Usage: bash tests/mediapipe/run.sh [pytest args]      (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
MEDIAPIPE_VERSION=${MEDIAPIPE_VERSION:-1.2.3}

echo "== environment 3: .venv-test-mediapipe (MediaPipe Tasks $MEDIAPIPE_VERSION, ai-edge-litert, no TensorFlow)"
[ -x .venv-test-mediapipe/bin/python ] || "$PY" -m venv .venv-test-mediapipe
.venv-test-mediapipe/bin/python -m pip install -q --upgrade pip
if ! .venv-test-mediapipe/bin/python -m pip install -q "mediapipe==$MEDIAPIPE_VERSION" ai-edge-litert pillow typer pytest; then
  echo "(mediapipe $MEDIAPIPE_VERSION has no wheel for this platform or Python: the MediaPipe tests are skipped)"
  exit 0
fi
.venv-test-mediapipe/bin/python -m pip install -q --no-deps --force-reinstall .

if [ -z "${EDGETL_TEST_MODELS:-}" ] || [ ! -f "$EDGETL_TEST_MODELS/done" ]; then
  if [ -x .venv-test/bin/python ] && .venv-test/bin/python -c "import tensorflow" 2>/dev/null; then
    models=$(mktemp -d)
    trap 'rm -rf "$models"' EXIT
    .venv-test/bin/python tests/make_test_models.py "$models" >/dev/null
    export EDGETL_TEST_MODELS="$models"
  fi
fi
# run from tests/, so the installed package (not the source tree) is tested
(cd tests && ../.venv-test-mediapipe/bin/python -m pytest -c ../pyproject.toml --rootdir .. -p no:cacheprovider mediapipe "$@")
