#!/usr/bin/env bash
# Prove on emulated ARM that `pip install edgetl` picks a backend with a wheel there and that the runtime
# works:  bash tests/arm/run.sh arm64|armhf [bookworm|bullseye]      (from anywhere; run as root)
#
#   arm64  Debian arm64 (aarch64): ai-edge-litert, NumPy, OpenCV (headless), Pillow: registry wheels
#   armhf  Debian armhf (armv7l): tflite-runtime from the registry; NumPy, Pillow, OpenCV from Debian's
#          packages (PyPI has no armv7 wheels of them), as on Raspberry Pi OS 32-bit
#   suite  bookworm (default: Python 3.11, glibc 2.36); bullseye (Python 3.9, glibc 2.31), arm64 only
#
# Only the target's programs are emulated (qemu-user-static through binfmt_misc). `debootstrap --foreign
# --variant=minbase` fetches the packages; the host unpacks them with dpkg-deb instead of the emulated
# second stage; the TARGET's Python evaluates edgetl's requirements (markers: its platform_machine, its
# Python) and the host's pip fetches exactly those as ARM wheels (--platform manylinux_2_17..2_<glibc>,
# --only-binary=:all:) into a --target folder, round after round until nothing is missing; then, inside
# `chroot ROOT env -i`, the target runs `edgetl predict` (a Coral model on grace_hopper: military
# uniform), `edgetl info` and `edgetl camera --headless` on a short video the host made with OpenCV.
#
# Skips (prints "SKIP: reason", exits 0) when ../shared is missing, when not root, or when the kernel
# will not run ARM binaries (binfmt_misc refused). As root with apt-get it installs what is missing of:
# debootstrap, qemu-user-static, binfmt-support. Nothing is bind-mounted into the root (ai-edge-litert
# 2.3 crashes in allocate_tensors when it sees the host's /sys) and the root never sees the host's
# environment (env -i). Caches, in $EDGETL_ARM_CACHE (default .cache/arm, git-ignored): the debootstrap
# tarball (rebuilt after 30 days), the ARM wheels, a host venv (packaging, setuptools, OpenCV).
# The Debian mirror is the one apt uses (/etc/apt/sources.list*, deb822 too), or $EDGETL_DEBIAN_MIRROR.
set -euo pipefail

ARCH=${1:-}
SUITE=${2:-bookworm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=${EDGETL_SHARED:-$REPO/../shared}
CACHE=${EDGETL_ARM_CACHE:-$REPO/.cache/arm}
MODEL=$SHARED/models/tf2_mobilenet_v2_1.0_224_ptq.tflite
IMAGE=$SHARED/images/grace_hopper.bmp
LABELS=$SHARED/images/imagenet_labels.txt
FRAMES=5

usage() { echo "error: $1" >&2; echo "hint: bash tests/arm/run.sh arm64|armhf [bookworm|bullseye]" >&2; exit 2; }
case "$ARCH" in
  arm64) QEMU=aarch64 MACHINE=aarch64 INCLUDE=python3 BACKEND=ai_edge_litert ;;
  armhf) QEMU=arm MACHINE=armv7l INCLUDE=python3,python3-numpy,python3-pil,python3-opencv BACKEND=tflite_runtime ;;
  *) usage "unknown architecture '${ARCH}'" ;;
esac
case "$SUITE" in
  bookworm) ;;
  bullseye) [ "$ARCH" = arm64 ] || usage "armhf on bullseye is not provable here: its NumPy 1.19 and Pillow 8.1 are older than edgetl needs and PyPI has no armv7 wheels of them (Raspberry Pi OS takes them from piwheels)" ;;
  *) usage "unknown suite '$SUITE'" ;;
esac

T0=${EPOCHREALTIME/./}
stamp() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[%3d.%ds] %s\n' $(( us / 1000000 )) $(( us / 100000 % 10 )) "$*"; }
skip() { echo "SKIP: $*"; exit 0; }
PASSED=0
passed() { PASSED=$(( PASSED + 1 )); stamp "ok: $*"; }
fail() { echo "FAIL: $*" >&2; echo "${ARCH:-arm}: $PASSED passed, 1 failed"; exit 1; }

echo "== edgetl on emulated ARM: $ARCH ($MACHINE), Debian $SUITE"
for f in "$MODEL" "$IMAGE" "$LABELS"; do
  [ -f "$f" ] || skip "needs ../shared ($f is missing)"
done
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot, binfmt_misc)"

# ---------------------------------------------------------------- host tools
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
{ command -v "qemu-$QEMU-static" >/dev/null 2>&1 && [ -f "/usr/share/binfmts/qemu-$QEMU" ]; } || need+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "needs ${need[*]} and there is no apt-get to install them"
  echo "installing with apt-get: ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } \
    || fail "apt-get could not install ${need[*]}"
fi

# ---------------------------------------------------------------- binfmt_misc: the kernel runs ARM ELF via qemu
BM=/proc/sys/fs/binfmt_misc
if [ ! -e "$BM/status" ]; then
  mount -t binfmt_misc binfmt_misc "$BM" 2>/dev/null \
    || skip "the kernel refuses to mount binfmt_misc at $BM (no privilege in this container?): ARM binaries cannot run here"
fi
[ "$(cat "$BM/status" 2>/dev/null)" = enabled ] || skip "binfmt_misc is disabled on this kernel"
if [ ! -e "$BM/qemu-$QEMU" ]; then
  update-binfmts --import "qemu-$QEMU" >/dev/null 2>&1 || true
fi
[ -e "$BM/qemu-$QEMU" ] || skip "the kernel refused to register qemu-$QEMU with binfmt_misc"
grep -q '^enabled' "$BM/qemu-$QEMU" || update-binfmts --enable "qemu-$QEMU" >/dev/null 2>&1 || true
grep -q '^enabled' "$BM/qemu-$QEMU" || skip "qemu-$QEMU is registered but disabled in binfmt_misc"
INTERP=$(sed -n 's/^interpreter //p' "$BM/qemu-$QEMU")
FLAGS=$(sed -n 's/^flags: //p' "$BM/qemu-$QEMU")
stamp "binfmt_misc: qemu-$QEMU -> $INTERP (flags $FLAGS)"

# ---------------------------------------------------------------- host venv: packaging, setuptools, OpenCV
mkdir -p "$CACHE"
HPY=python3
HV=$CACHE/host-venv-$("$HPY" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
# (a recent pip: 23.x checks Requires-Python against the host, not --python-version, when it installs)
if ! "$HV/bin/python" -c 'import packaging, setuptools, cv2, pip; assert int(pip.__version__.split(".")[0]) >= 25' >/dev/null 2>&1; then
  rm -rf "$HV"
  "$HPY" -m venv "$HV"
  "$HV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip "setuptools>=77" wheel packaging \
      opencv-python-headless >"$CACHE/host-venv.log" 2>&1 \
    || { cat "$CACHE/host-venv.log"; fail "could not install the host venv's tools"; }
  stamp "host venv ready ($HV)"
fi
HPIP=("$HV/bin/python" -m pip --disable-pip-version-check)

# the root is written once and thrown away: on a tmpfs (/dev/shm, when it allows exec and has 3 GB free)
# a run spends no time waiting for the disk
PARENT=${EDGETL_ARM_WORKDIR:-${TMPDIR:-/tmp}}
if [ -z "${EDGETL_ARM_WORKDIR:-}" ] && awk '$2 == "/dev/shm" && $3 == "tmpfs" && $4 !~ /noexec/ { ok = 1 } END { exit !ok }' /proc/mounts \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt 3000000 ]; then
  PARENT=/dev/shm
fi
WORK=$(mktemp -d "$PARENT/edgetl-arm-$ARCH.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root

# ---------------------------------------------------------------- the project's wheel, built on the host
mkdir -p "$WORK/src"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/edge_runtime" "$REPO/toolchain" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"${HPIP[@]}" wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; fail "could not build the project's wheel"; }
WHEEL=$(ls "$WORK"/dist/edgetl-*.whl)
stamp "built $(basename "$WHEEL")"

# ---------------------------------------------------------------- Debian root: debootstrap --foreign + dpkg-deb
TGZ=$CACHE/debootstrap/$SUITE-$ARCH-$(printf %s "$INCLUDE" | md5sum | cut -c1-8).tgz
if [ -f "$TGZ" ] && [ -n "$(find "$TGZ" -mtime +30)" ]; then rm -f "$TGZ"; fi
if [ ! -f "$TGZ" ]; then
  MIRROR=${EDGETL_DEBIAN_MIRROR:-$("$HPY" "$HERE/hostlib.py" mirror || true)}
  [ -n "$MIRROR" ] || skip "no Debian mirror in apt's sources (/etc/apt/sources.list*); set EDGETL_DEBIAN_MIRROR"
  mkdir -p "$CACHE/debootstrap"
  stamp "fetching Debian $SUITE $ARCH packages ($INCLUDE) with debootstrap"
  debootstrap --arch="$ARCH" --variant=minbase --include="$INCLUDE" --make-tarball="$TGZ.part" \
      "$SUITE" "$WORK/mk" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; rm -f "$TGZ.part"; fail "debootstrap could not fetch $SUITE $ARCH"; }
  mv "$TGZ.part" "$TGZ"
  rm -rf "$WORK/mk"
fi
debootstrap --foreign --arch="$ARCH" --variant=minbase --include="$INCLUDE" --unpack-tarball="$TGZ" \
    "$SUITE" "$ROOT" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap --foreign --unpack-tarball failed"; }
# the first stage unpacked the required packages; unpack the rest natively (no emulated second stage)
mapfile -t DEBS < <(awk 'NR==FNR { for (i = 1; i <= NF; i++) req[$i] = 1; next } !($1 in req) { print $2 }' \
                      "$ROOT/debootstrap/required" "$ROOT/debootstrap/debpaths")
# (documentation, manual pages and translations left out, as dpkg's path-exclude does in slim images;
# two at a time: the packages hold disjoint files)
printf "$ROOT%s\n" "${DEBS[@]}" | xargs -P 2 -I{} sh -c 'dpkg-deb --fsys-tarfile "$1" \
    | tar -x --keep-directory-symlink --exclude=./usr/share/doc/* --exclude=./usr/share/man/* \
          --exclude=./usr/share/locale/* -C "$2" || { echo "could not unpack $1" >&2; exit 255; }' _ {} "$ROOT" \
  || fail "dpkg-deb could not unpack the packages"
ALTS=$("$HPY" "$HERE/hostlib.py" alternatives "$ROOT" "$ROOT"/var/cache/apt/archives/*.deb)
GLIBC=$("$HPY" "$HERE/hostlib.py" glibc "$ROOT"/var/cache/apt/archives/*.deb) || fail "no libc6 among the packages"
rm -f "$ROOT"/var/cache/apt/archives/*.deb
if [[ "$FLAGS" != *F* ]]; then  # without the fix-binary flag the kernel looks for the interpreter in the root
  mkdir -p "$ROOT$(dirname "$INTERP")"
  cp "$(command -v "qemu-$QEMU-static")" "$ROOT$INTERP"
fi
stamp "root ready in $WORK: $(wc -l <"$ROOT/debootstrap/debpaths") packages, $(( ${#DEBS[@]} )) unpacked by dpkg-deb, $ALTS alternatives, glibc $GLIBC"

in_root() {  # a clean environment: nothing of the host's PIP_*/SSL_*/PYTHON* leaks in
  timeout 900 chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/opt/edgetl/site/bin:/usr/local/bin:/usr/bin:/bin PYTHONPATH=/opt/edgetl/site${EXTRA_PATH:-} "$@"
}
got=$(in_root /usr/bin/python3 -c 'import platform, sys; print(platform.machine(), "%d.%d" % sys.version_info[:2])' 2>&1) \
  || skip "the kernel did not run the $ARCH Python through qemu-$QEMU ($got)"
read -r TMACHINE PYV <<<"$got"
[ "$TMACHINE" = "$MACHINE" ] || fail "the root's Python says machine $TMACHINE, expected $MACHINE"
stamp "target Python: $PYV on $TMACHINE (emulated)"

# ---------------------------------------------------------------- what the target's markers ask for, as ARM wheels
PLAT=(--python-version "$PYV" --platform "manylinux2014_$MACHINE")
for minor in $(seq 17 "${GLIBC#2.}"); do PLAT+=(--platform "manylinux_2_${minor}_$MACHINE"); done
WHEELS=$CACHE/wheels/cp${PYV/./}-$MACHINE-glibc$GLIBC
mkdir -p "$WHEELS"
SITE=$ROOT/opt/edgetl/site
TOOLS=$ROOT/opt/edgetl-tools
pip_target() {  # pip_target DIR REQ...: ARM wheels of REQs (no dependencies) into DIR, from the cache if it can
  local dest=$1; shift  # (no --upgrade: it would replace DIR/bin, where edgetl's script is)
  local inst=("${HPIP[@]}" install -q --no-deps --only-binary=:all: "${PLAT[@]}" --target "$dest"
              --no-index --find-links "$WHEELS")
  "${inst[@]}" "$@" >"$WORK/pip.log" 2>&1 && return 0
  "${HPIP[@]}" download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$WHEELS" "$@" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log"; fail "no $ARCH wheel for: $*"; }
  "${inst[@]}" "$@" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; fail "pip could not install: $*"; }
}
pip_target "$TOOLS" packaging
cp "$HERE/target_reqs.py" "$TOOLS/"
"${HPIP[@]}" install -q --no-deps --target "$SITE" "$WHEEL" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; fail "pip could not install $WHEEL"; }
sed -i '1s|^#!.*|#!/usr/bin/python3|' "$SITE/bin/edgetl"  # what pip writes on the device
EXTRA_PATH=:/opt/edgetl-tools
for round in 1 2 3 4 5 6 7 8; do
  mapfile -t missing < <(in_root python3 /opt/edgetl-tools/target_reqs.py missing edgetl)
  [ ${#missing[@]} -eq 0 ] && break
  [ "$round" -lt 8 ] || fail "still missing after $round rounds: ${missing[*]}"
  stamp "round $round: the target asks for ${missing[*]}"
  pip_target "$SITE" "${missing[@]}"
done
echo "what satisfies edgetl's requirements on the target (its own markers):"
in_root python3 /opt/edgetl-tools/target_reqs.py check edgetl || fail "edgetl's requirements are not satisfied on $ARCH"
EXTRA_PATH=
passed "requirements: $(ls "$SITE" | grep -c '\.dist-info$') distributions from the registry, the rest from the OS"
in_root python3 -m compileall -q -f /opt/edgetl/site/edge_runtime /opt/edgetl/site/toolchain \
  || fail "edgetl's sources do not compile on Python $PYV"
passed "edge_runtime/ and toolchain/ compile on Python $PYV"

# ---------------------------------------------------------------- data: the Coral model, grace_hopper, a video
mkdir -p "$ROOT/data"
cp "$MODEL" "$ROOT/data/model.tflite"
cp "$IMAGE" "$ROOT/data/grace_hopper.bmp"
cp "$LABELS" "$ROOT/data/labels.txt"
"$HV/bin/python" - "$IMAGE" "$ROOT/data/hopper.avi" "$((FRAMES + 1))" <<'PY'
import sys, cv2
img = cv2.imread(sys.argv[1])
h, w = img.shape[:2]
out = cv2.VideoWriter(sys.argv[2], cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
assert out.isOpened(), "OpenCV cannot write an MJPG video"
for i in range(int(sys.argv[3])):
    out.write(cv2.GaussianBlur(img, (3, 3), 0) if i % 2 else img)
out.release()
PY
stamp "data: model, grace_hopper.bmp, labels, hopper.avi ($((FRAMES + 1)) frames, made by the host's OpenCV)"

# ---------------------------------------------------------------- the runtime verbs, on the target
echo "\$ edgetl predict model.tflite grace_hopper.bmp          (labels from the model's own TFLite metadata)"
out=$(in_root edgetl predict /data/model.tflite /data/grace_hopper.bmp 2>"$WORK/err") \
  || { cat "$WORK/err"; fail "edgetl predict failed"; }
echo "$out"; cat "$WORK/err"
grep -q "grace_hopper.bmp  *military uniform " <<<"$out" || fail "predict: top-1 is not 'military uniform'"
! grep -q "warning:" "$WORK/err" || fail "predict: a warning for a model that carries its metadata"
passed "predict: military uniform, no flags, no warning"

echo "\$ edgetl info model.tflite"
out=$(in_root edgetl info /data/model.tflite 2>"$WORK/err") || { cat "$WORK/err"; fail "edgetl info failed"; }
echo "$out"; cat "$WORK/err"
grep -q "^backend  *$BACKEND " <<<"$out" || fail "info: backend is not $BACKEND"
grep -q "uint8 \[1, 224, 224, 3\]" <<<"$out" || fail "info: input is not uint8 [1, 224, 224, 3]"
grep -q "^  labels   1001: background" <<<"$out" || fail "info: the TFLite metadata's 1001 labels are not shown"
passed "info: $(grep '^backend' <<<"$out" | sed 's/^backend *//')"

echo "\$ edgetl camera model.tflite --headless --source hopper.avi --max-frames $FRAMES"
out=$(in_root edgetl camera /data/model.tflite --headless --source /data/hopper.avi --max-frames "$FRAMES" \
      2>"$WORK/err") || { cat "$WORK/err"; fail "edgetl camera failed"; }
echo "$out"; cat "$WORK/err"
"$HPY" -c '
import json, sys
lines = [json.loads(x) for x in sys.stdin.read().splitlines() if x.strip()]
assert len(lines) == int(sys.argv[1]), len(lines)
assert [x["frame"] for x in lines] == list(range(len(lines)))
assert all(x["label"] == "military uniform" for x in lines), [x["label"] for x in lines]
' "$FRAMES" <<<"$out" || fail "camera: expected $FRAMES JSON lines, each military uniform"
passed "camera: $FRAMES frames, military uniform"
echo "PASS: edgetl installs and runs on $ARCH ($MACHINE, Debian $SUITE, Python $PYV, $BACKEND)"
echo "$ARCH: $PASSED passed, 0 failed"
