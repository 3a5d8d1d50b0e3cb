"""pyproject's environment markers: every platform gets one TFLite interpreter that has a wheel there and at
most one OpenCV wheel (never both opencv-python and opencv-python-headless); a missing OpenCV (32-bit ARM
takes it from the OS) is exit 2 with a hint. The install itself is proved on emulated ARM by run.sh."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import IMAGENET_LABELS, REF_PTQ, run_cli

packaging = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parents[2]
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
OPENCV = {"opencv-python", "opencv-python-headless"}
BACKENDS = {"ai-edge-litert", "tflite-runtime"}


def _dependencies() -> list:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def selected(sys_platform: str, machine: str, python: str) -> dict:
    """{name: [specifiers]} that pip would install on that platform (markers evaluated for it)."""
    system = {"linux": "Linux", "win32": "Windows", "darwin": "Darwin"}[sys_platform]
    env = {"sys_platform": sys_platform, "platform_machine": machine, "platform_system": system,
           "os_name": "nt" if sys_platform == "win32" else "posix", "python_version": python,
           "python_full_version": python + ".0", "implementation_name": "cpython",
           "implementation_version": python + ".0", "platform_python_implementation": "CPython",
           "platform_release": "", "platform_version": "", "extra": ""}
    out = {}
    for text in _dependencies():
        req = packaging.Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.setdefault(req.name, []).append(str(req.specifier))
    return out


def _allows_numpy2(specs) -> bool:
    from packaging.specifiers import SpecifierSet

    return all(SpecifierSet(s).contains("2.1.0") for s in specs)


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", [("linux", "x86_64"), ("linux", "aarch64"), ("win32", "AMD64"),
                                      ("darwin", "arm64")])
def test_64bit_platforms_get_ai_edge_litert(platform, python):
    deps = selected(*platform, python)
    if platform[0] == "win32" and python == "3.9":  # ai-edge-litert has no cp39 Windows wheel
        assert not set(deps) & BACKENDS
    else:
        assert set(deps) & BACKENDS == {"ai-edge-litert"}
    assert _allows_numpy2(deps["numpy"])
    expected_cv = "opencv-python-headless" if platform[0] == "linux" else "opencv-python"
    assert set(deps) & OPENCV == {expected_cv}
    assert ("tomli" in deps) == (python in ("3.9", "3.10"))


@pytest.mark.parametrize("python", ("3.9", "3.10", "3.11"))
@pytest.mark.parametrize("machine", ("armv7l", "armv8l"))
def test_32bit_arm_gets_tflite_runtime_numpy1_and_no_pip_opencv(machine, python):
    deps = selected("linux", machine, python)
    assert set(deps) & BACKENDS == {"tflite-runtime"}
    assert not _allows_numpy2(deps["numpy"])  # tflite-runtime 2.14 was built for NumPy 1
    assert not set(deps) & OPENCV  # no armv7 wheel on PyPI: the OS's python3-opencv or piwheels


@pytest.mark.parametrize("python", ("3.12", "3.13"))
def test_32bit_arm_on_new_python_installs_without_a_backend(python):
    """No interpreter has an armv7 wheel for 3.12+: the install still succeeds, the runtime says why."""
    deps = selected("linux", "armv7l", python)
    assert not set(deps) & BACKENDS and not set(deps) & OPENCV
    assert _allows_numpy2(deps["numpy"])


def test_no_platform_gets_both_opencv_wheels():
    for platform in [("linux", m) for m in ("x86_64", "aarch64", "armv7l", "armv8l", "armv6l", "ppc64le")] + \
            [("win32", "AMD64"), ("win32", "ARM64"), ("darwin", "arm64"), ("darwin", "x86_64")]:
        for python in PYTHONS:
            assert len(set(selected(*platform, python)) & OPENCV) <= 1, (platform, python)


def test_missing_opencv_is_a_usage_error_with_a_hint(shared):
    r = run_cli("predict", REF_PTQ, shared / "images" / "grace_hopper.bmp", "--labels", IMAGENET_LABELS,
                block=("cv2",))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: OpenCV (the cv2 module) is not installed" in r.stderr
    assert "hint: pip install opencv-python-headless" in r.stderr and "python3-opencv" in r.stderr
    assert "Traceback" not in r.stderr
