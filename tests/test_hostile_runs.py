"""Hostile cases against a run folder with real `edgetl` processes (issue 12's data-loss items): a kill loop
(SIGKILL and SIGINT at seeded random delays) for build, finetune, quantize and clean that compares a content
manifest of the previous run before and after; `quantize --out DIR` into a folder of the user's; `clean`
when photos vanished; runs reached through symbolic links; mount points; errors that name the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, assert_user_error, leftovers, requires_tf, run_cli, write_dataset

USER = {"notes.txt": "my notes", "plots/my_annotations.txt": "ann", "logs/my_experiment_log.txt": "exp",
        "cache/README_mine.txt": "readme", "model_from_colleague.tflite": "colleague"}
CLI = "import sys; from toolchain.cli import main; main(sys.argv[1:])"


def _sigint_as_at_a_terminal():
    """A shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt:
    the command must get SIGINT as at a terminal, or the SIGINT half of a kill loop tests nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def content(root: Path) -> dict:
    """relative path -> sha256 of every regular file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def add_user_files(run: Path):
    for rel, text in USER.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)


def user_files(run: Path) -> dict:
    return {rel: (run / rel).read_text() if (run / rel).is_file() else None for rel in USER}


def next_command(run: Path):
    """What the next command does first: take the lock, finish or roll back what a killed one left."""
    from toolchain.rundir import runfolder

    with runfolder.RunLock(run):
        runfolder.check_existing(run)


def complete_run(run: Path) -> bool:
    """Every file of the run's manifest is there with the content recorded."""
    from toolchain.rundir import runfolder

    mf = runfolder.manifest(run)
    return bool(mf) and all(runfolder.matches(run, rel, e) for rel, e in mf.items())


def kill_loop(template: Path, tmp_path: Path, args, n_kills: int, seed: int, command_seconds: float | None = None):
    """Run `edgetl ARGS` (RUN stands for the run) on copies of ``template`` and kill it at seeded random
    delays, with SIGKILL and SIGINT in turn. Every time: the user's files are untouched, and the run is
    byte for byte the previous one, or (only when the kill came after the commit) a complete new run."""
    rng = np.random.default_rng(seed)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if command_seconds is None:  # how long the command takes here: one uninterrupted run
        run = tmp_path / "ref" / "run"
        shutil.copytree(template, run, symlinks=True)
        t0 = time.perf_counter()
        r = run_cli(*[run if a == "RUN" else a for a in args], timeout=900)
        command_seconds = time.perf_counter() - t0
        assert r.returncode in (0, 1), r.stderr[-3000:]
    outcomes = []
    for k in range(n_kills):
        run = tmp_path / f"k{k}" / "run"
        shutil.copytree(template, run, symlinks=True)
        add_user_files(run)
        before = content(run)
        sig = signal.SIGKILL if k % 2 == 0 else signal.SIGINT
        delay = float(rng.uniform(0.05, 1.0)) * command_seconds
        p = subprocess.Popen([sys.executable, "-c", CLI, *[str(run) if a == "RUN" else str(a) for a in args]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=_sigint_as_at_a_terminal)
        time.sleep(delay)
        finished = p.poll() is not None
        if not finished:
            p.send_signal(sig)
        _, err = p.communicate(timeout=300)
        assert user_files(run) == USER, (k, delay, err[-2000:])
        if p.returncode in (0, 1):  # it got to the end (the commit) before the signal took effect
            outcome = "completed"
            # a signal in the first half of the command's time was not ignored (it ends the command)
            assert finished or delay > 0.5 * command_seconds, (sig.name, delay, command_seconds, err[-2000:])
        else:
            assert p.returncode in (-9, -2, 130), (p.returncode, err[-2000:])  # -2: SIGINT while exiting
            outcome = "identical" if content(run) == before else "committed"
        if outcome == "committed":  # killed after the commit point: the new run is complete
            assert complete_run(run), (k, delay)
        next_command(run)
        assert user_files(run) == USER and leftovers(run) == []
        if outcome == "identical":
            assert content(run) == before, (k, delay)  # the next command changed nothing either
        outcomes.append((sig.name, round(delay, 2), outcome))
    return outcomes


@pytest.fixture
def user_run(good_run):
    add_user_files(good_run)
    return good_run


@requires_tf
@pytest.mark.parametrize("verb", ["quantize", "build", "finetune"])
def test_kill_loop_previous_run_byte_identical(verb, fast_run_template, tmp_path, tiny_data):
    args = {"quantize": ["quantize", "RUN", "--quantize", "float32", "--force"],
            "build": ["build", tiny_data, "--out", "RUN", "--force", *FAST],
            "finetune": ["finetune", "RUN", "--force", "--fine-tune-epochs", "1"]}[verb]
    n = int(os.environ.get("EDGETL_KILL_LOOP", "3" if verb == "quantize" else "2"))
    outcomes = kill_loop(fast_run_template, tmp_path, args, n, seed={"quantize": 1, "build": 2, "finetune": 3}[verb])
    assert any(o[2] == "identical" for o in outcomes), outcomes  # at least one kill landed mid-command
    print(verb, outcomes)


@requires_tf
def test_kill_loop_clean(fast_run_template, tmp_path):
    """clean deletes regenerable files one by one: a kill at any time leaves every result and every file
    of the user's."""
    results = None
    n = int(os.environ.get("EDGETL_KILL_LOOP", "4"))
    for k, delay in enumerate(np.random.default_rng(4).uniform(0.05, 0.6, size=n)):
        run = tmp_path / f"c{k}" / "run"
        shutil.copytree(fast_run_template, run, symlinks=True)
        add_user_files(run)
        keep = {r: h for r, h in content(run).items()
                if not r.startswith(("cache/images", "cache/index", "logs/convert")) and r not in ("stage1.keras",
                                                                                                  ".edgetl-run")}
        results = results or keep
        p = subprocess.Popen([sys.executable, "-c", CLI, "clean", str(run)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=_sigint_as_at_a_terminal)
        time.sleep(float(delay))
        p.send_signal(signal.SIGKILL if k % 2 == 0 else signal.SIGINT)
        p.wait(timeout=60)
        assert {r: h for r, h in content(run).items() if r in keep} == keep and user_files(run) == USER
        r = run_cli("clean", run, block_tf=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert {r: h for r, h in content(run).items() if r in keep} == keep and leftovers(run) == []
    print("clean", k + 1, "kills")


@requires_tf
def test_quantize_out_into_a_folder_of_the_users(good_run, tmp_path):
    """`quantize RUN --out DIR` replaces nothing edgetl did not write there: the user's labels.txt,
    logs/ and a model of someone else's stay; only edgetl's own models are replaced, with --force."""
    dest = tmp_path / "export"
    (dest / "logs").mkdir(parents=True)
    (dest / "labels.txt").write_text("my labels\n")
    (dest / "logs" / "convert_float32.log").write_text("my log")
    (dest / "model_float32.tflite").write_bytes(b"someone else's model")
    before = content(dest)
    r = run_cli("quantize", good_run, "--quantize", "float32", "--out", dest, timeout=600)
    assert_user_error(r, "already exist", "--force")
    r = run_cli("quantize", good_run, "--quantize", "float32", "--out", dest, "--force", timeout=600)
    assert_user_error(r, "not written by edgetl")
    assert content(dest) == before
    (dest / "model_float32.tflite").unlink()
    r = run_cli("quantize", good_run, "--quantize", "float32", "--out", dest, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (dest / "labels.txt").read_text() == "my labels\n" and "kept" in r.stderr
    assert (dest / "logs" / "convert_float32.log").read_text() == "my log"
    assert sorted(p.name for p in dest.iterdir()) == ["labels.txt", "logs", "model_float32.json",
                                                      "model_float32.tflite"]
    first = (dest / "model_float32.tflite").read_bytes()
    r = run_cli("quantize", good_run, "--quantize", "float32", "--out", dest, "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]  # edgetl's own model: replaced with --force
    assert (dest / "model_float32.tflite").read_bytes()[:16] == first[:16]


@requires_tf
def test_quantize_logs_never_grow_the_previous_run(good_run):
    """A staged copy hard-links the run's files; the converter's log used to be appended to in place, so
    the previous run's logs/convert_float32.log grew while quantize ran (and after a kill)."""
    log = good_run / "logs" / "convert_float32.log"
    assert log.is_file()
    old_inode, old = log.stat().st_ino, log.read_bytes()
    linked = good_run.parent / "keep-a-link.log"
    os.link(log, linked)  # what a staged copy does
    r = run_cli("quantize", good_run, "--quantize", "float32", "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert linked.read_bytes() == old  # the old inode was never written
    assert log.stat().st_ino != old_inode


def _data_run(tmp_path) -> tuple:
    """A run folder as `edgetl train` leaves it before training (no TensorFlow needed)."""
    from toolchain.cfg import config
    from toolchain.core import data
    from toolchain.rundir import runfolder

    photos = write_dataset(tmp_path / "photos", per_class=4)
    run = tmp_path / "run"
    with runfolder.Staged(run, fresh=True) as st:
        data.build(photos, st.path, config.resolve(None, image_size=96, split=[0.5, 0.25, 0.25]))
        runfolder.write_json(st.path / "report.json", {"status": "trained"})
        st.commit("trained")
    return run, photos


def test_clean_keeps_the_cache_when_one_photo_vanished(tmp_path):
    run, photos = _data_run(tmp_path)
    gone = sorted((photos / "red").iterdir())[0]
    gone.unlink()
    r = run_cli("clean", run, block_tf=True, timeout=60)
    assert r.returncode == 0 and "1 photo(s) of the run are no longer in" in r.stderr and "--force" in r.stderr
    assert (run / "cache" / "images.npy").is_file()
    r = run_cli("clean", run, "--force", block_tf=True, timeout=60)
    assert r.returncode == 0 and not (run / "cache").exists()


def test_clean_dry_run_on_a_named_pipe_split_does_not_hang(tmp_path):
    run, _ = _data_run(tmp_path)
    (run / "split.json").unlink()
    os.mkfifo(run / "split.json")
    r = run_cli("clean", run, "--dry-run", block_tf=True, timeout=30)
    assert r.returncode == 0 and "kept" in r.stderr and (run / "cache" / "images.npy").is_file()


def test_out_through_a_link_inside_the_data_folder_is_refused(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "blue" / "link").symlink_to(elsewhere)
    r = run_cli("build", data, "--out", data / "blue" / "link", *FAST, block_tf=True, timeout=60)
    assert_user_error(r, "inside the data folder")
    assert list(elsewhere.iterdir()) == []


def test_out_dot_in_an_empty_folder_is_not_called_not_empty(tmp_path, tiny_data):
    here = tmp_path / "empty"
    here.mkdir()
    r = run_cli("train", tiny_data, "--out", ".", "--epochs", "0", cwd=here, block_tf=True, timeout=60)
    assert "not empty" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_out_on_a_mount_point_is_refused_before_any_work(tmp_path, tiny_data):
    where = tmp_path / "mnt"
    where.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a filesystem here ({m.stderr.strip() or 'not root'})")
    try:
        r = run_cli("build", tiny_data, "--out", where, *FAST, block_tf=True, timeout=60)
        assert_user_error(r, "mount point", str(where / "run"))
        assert list(where.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
