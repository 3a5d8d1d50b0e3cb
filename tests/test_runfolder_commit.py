"""The run folder's commit, killed at every step: nothing of the user's is ever lost, and the run is always
either the old one or the new one, whole.

A real process writes a run through ``runfolder.Staged`` (what build/train/finetune/quantize use) and is
killed by a real SIGKILL at the N-th step of its commit (``EDGETL_FAULT=commit:N``: after the manifest is
written, after each of the user's files is linked, after the exchange, after each entry of the old run is
dissolved), for every N until the commit completes, on both commit paths (the atomic exchange, and the two
renames used where the kernel has no exchange). After each kill, the next command (which takes the lock)
finishes or rolls back what was left. No TensorFlow needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import sys
from pathlib import Path
from toolchain.rundir import runfolder

out, tag, fresh = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "fresh"
with runfolder.RunLock(out):
    runfolder.check_new(out, True) if fresh else runfolder.check_existing(out)
    with runfolder.Staged(out, fresh=fresh) as st:
        names = ["split.json", "report.json", "plots/curves.png", "cache/images.npy", "logs/convert_int8.log",
                 f"model_{tag}.tflite"] if fresh else ["report.json", f"model_{tag}.tflite", "logs/convert_int8.log"]
        for rel in names:
            runfolder.write_text(st.path / rel, f"{tag}:{rel}\n" * 50)
        st.commit("built")
"""

# The cases (files of the user's at every depth, names that look like edgetl's), plus a deep
# folder, an empty folder, a symbolic link, a named pipe and an edgetl file the user edited.
USER_FILES = {
    "plots/my_annotations.txt": "annotations",
    "logs/my_experiment_log.txt": "experiment",
    "cache/README_mine.txt": "readme",
    "model_comparison.json": '{"mine": 1}',
    "model_from_colleague.tflite": "colleague's model",
    ".draft.tmp.md": "draft",
    "notes/deep/x.txt": "deep note",
}


def drive(out: Path, tag: str, fresh: bool, fault: int | None = None, exchange: bool = True):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EDGETL_FAULT", None)
    if fault is not None:
        env["EDGETL_FAULT"] = f"commit:{fault}"
    if not exchange:
        env["EDGETL_NO_EXCHANGE"] = "1"
    return subprocess.run([sys.executable, "-c", DRIVER, str(out), tag, "fresh" if fresh else "keep"],
                          capture_output=True, text=True, env=env, timeout=60)


def edgetl_state(run: Path) -> dict:
    """What edgetl wrote in the run, by its manifest: relative path -> content."""
    doc = json.loads((run / ".edgetl-run").read_text())
    return {rel: (run / rel).read_text() for rel in doc["files"]}


def make_old_run(root: Path) -> Path:
    run = root / "runs" / "x"
    r = drive(run, "old", fresh=True)
    assert r.returncode == 0, r.stderr
    for rel, text in USER_FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    (run / "emptydir").mkdir()
    os.symlink("/etc/hostname", run / "link")
    os.mkfifo(run / "pipe")
    with open(run / "split.json", "a") as f:  # edited by the user: no longer edgetl's
        f.write("my edit\n")
    return run


def user_view(run: Path) -> dict:
    """Where the user's things are, and what they hold."""
    out = {}
    for rel in USER_FILES:
        out[rel] = (run / rel).read_text() if (run / rel).is_file() else None
    out["emptydir"] = (run / "emptydir").is_dir()
    out["link"] = os.readlink(run / "link") if (run / "link").is_symlink() else None
    out["pipe"] = (run / "pipe").exists() and not (run / "pipe").is_file()
    edited = [p for p in ("split.json", "split.json.yours") if (run / p).is_file()
              and (run / p).read_text().endswith("my edit\n")]
    out["edited"] = edited[:1]
    return out


def everything_under(root: Path) -> dict:
    """Content of every regular file under ``root`` (hidden siblings of the run included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def recover(run: Path):
    """What the next command does first: take the lock, then finish or roll back a killed commit."""
    from toolchain.rundir import runfolder

    with runfolder.RunLock(run):
        runfolder.check_existing(run)


@pytest.mark.parametrize("fresh", [True, False], ids=["build", "quantize"])
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_kill_at_every_commit_step_loses_nothing(tmp_path, fresh, exchange):
    ref = tmp_path / "ref"
    expected_new = None
    user_expected = None
    n = 0
    while True:
        n += 1
        assert n < 80, "the commit never completed"
        case = tmp_path / f"k{n}"
        run = make_old_run(case)
        old_state = edgetl_state(run)
        user_before = user_view(run)
        if user_expected is None:
            user_expected = user_before
            r = drive(make_old_run(ref), "new", fresh=fresh, exchange=exchange)  # the uninterrupted result
            assert r.returncode == 0, r.stderr
            expected_new = edgetl_state(ref / "runs" / "x")
        r = drive(run, "new", fresh=fresh, fault=n, exchange=exchange)
        killed = r.returncode == -9
        assert killed or r.returncode == 0, r.stderr
        # right after the kill: every byte of the user's is still somewhere under runs/
        after = set(everything_under(case / "runs").values())
        for rel, text in USER_FILES.items():
            assert text.encode() in after, (n, rel)
        assert any(c.endswith(b"my edit\n") for c in after), n
        recover(run)
        state = edgetl_state(run)
        assert state in (old_state, expected_new), n
        view = user_view(run)
        assert {k: v for k, v in view.items() if k != "edited"} == \
            {k: v for k, v in user_expected.items() if k != "edited"}, (n, view)
        assert view["edited"], n  # the edited file is kept (as split.json.yours beside a new split.json)
        leftovers = [p.name for p in run.parent.iterdir() if p.name != "x"]
        assert leftovers == [], (n, leftovers)
        if not killed:
            assert state == expected_new
            break
    assert n > 10  # every step was reached: manifest, each link, the swap, each dissolved entry


def test_lock_file_planted_as_a_link_is_refused_and_the_target_untouched(tmp_path):
    """`ln -s ~/victim.txt runs/.x.edgetl-lock; edgetl clean runs/x` used to truncate victim.txt."""
    from conftest import run_cli

    run = make_old_run(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = run.parent / ".x.edgetl-lock"
    for plant in (lambda: os.symlink(victim, lock), lambda: os.link(victim, lock)):
        plant()
        r = run_cli("clean", run, block_tf=True, timeout=60)
        assert r.returncode == 2 and "lock file" in r.stderr and "hint:" in r.stderr, r.stderr
        assert victim.read_text() == "precious\n"
        lock.unlink()
    os.mkfifo(lock)
    r = run_cli("clean", run, block_tf=True, timeout=60)  # no hang on a named pipe either
    assert r.returncode == 2 and "named pipe" in r.stderr
    lock.unlink()


def test_a_run_reached_through_a_symlink_is_the_same_run(tmp_path):
    from conftest import run_cli

    from toolchain.rundir import runfolder

    run = make_old_run(tmp_path)
    link = tmp_path / "runs" / "alias"
    os.symlink(run, link)
    with runfolder.RunLock(run):  # a command holds runs/x: the same run through the link is busy
        r = run_cli("clean", link, block_tf=True, timeout=60)
    assert r.returncode == 2 and "in use by another edgetl command" in r.stderr, r.stderr
    r = drive(link, "new", fresh=True)  # a build through the link replaces the real run, the link stays
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and "model_new.tflite" in edgetl_state(run)
    assert user_view(run)["notes/deep/x.txt"] == "deep note"
