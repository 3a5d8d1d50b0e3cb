"""Long steps say they are alive: progress bars with an ETA (redrawn on a terminal, periodic plain lines
when piped), per-batch progress in both training stages, a heartbeat while the TFLite converter runs
silenced."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import TINY_TRAIN, requires_tf, run_cli

from toolchain import ui


def test_plain_lines_every_tenth_with_eta_and_a_final_line():
    out = io.StringIO()  # not a terminal
    bar = ui.Progress(50, "decoding photos", stream=out, min_interval=0)
    for _ in range(50):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 11, lines  # one per 10% (not one per item), plus the final line
    assert all("ETA " in line for line in lines[:-1]) and "ETA" not in lines[-1]
    counts = [int(re.search(r" (\d+)/50", line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 50
    assert all(b - a >= 5 for a, b in zip(counts, counts[1:-1]))  # at least 10% apart


def test_plain_lines_are_also_spaced_in_time():
    """Every 10% or every N seconds, whichever is rarer: a fast loop prints only its final line."""
    out = io.StringIO()
    with ui.Progress(1000, "fast", stream=out, min_interval=30) as bar:
        for _ in range(1000):
            bar.update()
    assert len(out.getvalue().splitlines()) == 1 and "1000/1000" in out.getvalue()
    # the interval comes from $EDGETL_PROGRESS_SECONDS by default
    os.environ["EDGETL_PROGRESS_SECONDS"] = "0"
    try:
        assert ui.Progress(10, "x", stream=io.StringIO()).min_interval == 0
    finally:
        del os.environ["EDGETL_PROGRESS_SECONDS"]
    assert ui.Progress(10, "x", stream=io.StringIO()).min_interval == ui.PLAIN_SECONDS


def test_eta_is_remaining_work_at_the_mean_rate():
    bar = ui.Progress(100, "x", stream=io.StringIO())
    assert bar.eta() is None  # nothing done yet: unknown
    bar.n = 25
    assert bar.eta(bar.start + 5.0) == pytest.approx(15.0)  # 25 in 5 s -> 75 more in 15 s
    assert "ETA 15s" in bar._text(bar.start + 5.0)
    assert [ui.duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]


def test_terminal_bar_redraws_in_place_with_eta():
    """On a real pseudo-terminal the bar is redrawn with carriage returns and shows the ETA."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    try:
        bar = ui.Progress(4, "decoding photos", stream=stream)
        assert bar.tty
        for _ in range(4):
            bar.update()
            time.sleep(0.12)
        bar.close()
        stream.flush()
        text = ""
        deadline = time.monotonic() + 10
        while not text.endswith("\n") and time.monotonic() < deadline:  # a pty hands the bytes over in pieces
            if select.select([master], [], [], 0.5)[0]:
                text += os.read(master, 65536).decode()
    finally:
        stream.close()
        os.close(master)
    frames = [f.lstrip("\r") for f in text.split("\033[K")]  # each redraw: \r TEXT ESC[K (erase the rest)
    assert len(frames) >= 3 and all(f.startswith("decoding photos") for f in frames[:-1])
    assert "ETA" in frames[0] and "4/4" in frames[-2] and "ETA" not in frames[-2]
    assert frames[-1].strip() == "" and text.endswith("\n")  # closed: the cursor moves to a new line


HEARTBEAT_CODE = r"""
import os, sys, time
from pathlib import Path
from toolchain.core.quiet import silenced
log = Path(sys.argv[1])
with silenced(log, heartbeat="converting int8"):
    os.write(1, b"C++ chatter on fd 1\n")
    os.write(2, b"C++ chatter on fd 2\n")
    time.sleep(1.3)
print("after", file=sys.stderr)
"""


@pytest.mark.parametrize("interval, beats", [("0.3", True), ("0", False)])
def test_heartbeat_reaches_the_real_stderr_while_silenced(tmp_path, interval, beats):
    """fds 1 and 2 go to the log while the converter runs; the heartbeat still reaches the user's stderr
    (a pipe here), every $EDGETL_HEARTBEAT_SECONDS (0: off)."""
    log = tmp_path / "convert.log"
    env = dict(os.environ, EDGETL_HEARTBEAT_SECONDS=interval)
    r = subprocess.run([sys.executable, "-c", HEARTBEAT_CODE, str(log)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    beat_lines = [line for line in r.stderr.splitlines() if re.fullmatch(r"converting int8 \.\.\. \d+s", line)]
    if beats:
        assert len(beat_lines) >= 3, r.stderr
    else:
        assert not beat_lines, r.stderr
    assert "chatter" not in r.stderr + r.stdout
    assert "C++ chatter on fd 1" in log.read_text() and "C++ chatter on fd 2" in log.read_text()
    assert r.stderr.rstrip().endswith("after")  # stderr restored, heartbeat stopped before


@requires_tf
def test_build_shows_progress_in_both_stages_and_a_heartbeat_while_converting(tmp_path, tiny_data):
    """A real build with stderr piped: periodic lines with an ETA during stage 1 and stage 2 (not only at
    the end of each epoch), and heartbeats while the converter runs (float32 here: the same heartbeat as int8,
    whose conversion is the long one, in a fraction of the time)."""
    run = tmp_path / "run"
    r = run_cli("build", tiny_data, "--out", run, *TINY_TRAIN, "--epochs", "2", "--fine-tune-epochs", "2",
                "--quantize", "float32", "--min-agreement", "0", "--max-drop", "100", "--keep-cache",
                env={"EDGETL_PROGRESS_SECONDS": "0", "EDGETL_HEARTBEAT_SECONDS": "0.2"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()

    def index(pattern):
        return [i for i, line in enumerate(lines) if re.search(pattern, line)]

    s1 = index(r"^stage 1 epoch 1/2 .* ETA \d")
    s2 = index(r"^stage 2 epoch 1/2 .* ETA \d")
    assert s1 and s2, r.stderr[-3000:]
    # mid-epoch lines carry the running loss; the epoch's last line its validation figures
    assert "loss" in lines[s1[0]] and index(r"^stage 2 epoch 2/2 .*val_loss")
    # stage 2's lines come while it trains (before its verdict), stage 1's before stage 2
    verdict = index(r"^stage 2 (improved|did not improve)")[0]
    assert max(s1) < min(s2) < verdict
    start, beats = index(r"^converting to float32")[0], index(r"converting float32.* \.\.\. \d+s$")
    assert beats and all(b > start for b in beats), r.stderr[-3000:]
    assert (run / "cache" / "images.npy").is_file()  # --keep-cache
    assert "Traceback" not in r.stderr
