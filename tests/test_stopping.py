"""Stopping and concurrency: a command stopped by a signal says in one line what it kept and how to go on;
a stopped sweep stops its trainings and names the runs that will resume; two sweeps into one folder leave
each other's runs alone; every run of a sweep gets the global --threads.

The subprocess tests are bounded: tiny configs and data, every wait has a deadline, and a process still
running at the end is killed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY, hold_lock_in_another_process, set_options, subprocess_env
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.cli.stopping import Stopped
from emorl_cli.data.synth import synthesize
from emorl_cli.files import pid_alive

runner = CliRunner()
EMORL = [sys.executable, "-m", "emorl_cli", "--threads", "1"]
LOCK_NAME = ".emorl-lock"
LONG = set_options(*TINY, "training.iters=100000", "training.checkpoint_every=1")


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def wait_for(condition: Callable[[], bool], seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {seconds} s")


def stopped(proc: subprocess.Popen, signum: int, seconds: float = 90) -> tuple[int, str]:
    """Send `signum`, wait (bounded) and return the exit code and stderr."""
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {seconds} s after the signal") from None
    return proc.returncode, err


def the_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def start(*args: str) -> subprocess.Popen:
    command = [*EMORL, *(str(a) for a in args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stopping") / "data"
    synthesize("tetrominoes", folder, 16, 8, seed=4)
    return folder


# ------------------------------------------------------------------------------ one line when stopped


def test_sigterm_to_train_names_the_kept_checkpoint_and_the_resume_command(data, tmp_path):
    run = tmp_path / "run"
    proc = start("train", "demo", "--data-dir", data, "--out", run, *LONG)
    try:
        wait_for(lambda: len(list((run / "checkpoints").glob("step_*.pt"))) >= 2, 180, "checkpoint", proc)
        code, err = stopped(proc, signal.SIGTERM)
    finally:
        proc.kill()
    line = the_error_line(err)
    assert code == 143, err
    assert line.startswith("error: stopped by SIGTERM;") and "keeps its checkpoints up to step_" in line
    assert line.endswith("--resume`") and f"--out {run}" in line
    assert not (run / LOCK_NAME).exists()  # the lock was let go


def test_sigint_to_data_synth_keeps_whole_files_only_and_says_how_to_write_them(tmp_path):
    out = tmp_path / "synth"
    proc = start("data", "synth", "tetrominoes", "--out", out, "--train", 400_000, "--test", 4)
    try:
        wait_for(lambda: any(out.glob(".tetrominoes.h5.*.tmp")), 120, "file being written", proc)
        code, err = stopped(proc, signal.SIGINT)
    finally:
        proc.kill()
    line = the_error_line(err)
    assert code == 130, err
    assert "stopped by SIGINT; kept no file in" in line and "the file being written was discarded" in line
    assert line.endswith("--force`")
    assert sorted(p.name for p in out.iterdir()) == []  # neither a half file nor its temporary, nor the lock


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_eval_stopped_says_nothing_was_written_and_how_to_rerun(monkeypatch, tmp_path, signum, code):
    from emorl_cli.cli.inference import InferenceOptions

    def stop(self):
        raise Stopped(signum)

    monkeypatch.setattr(InferenceOptions, "load", stop)
    result = invoke("eval", "ari", "--checkpoint", tmp_path / "c.pt", "--out", tmp_path / "e")
    assert result.exit_code == code, result.output
    assert f"stopped by {signal.Signals(signum).name}; no results were written to {tmp_path / 'e'}" in result.output
    assert "again" in result.output and "Traceback" not in result.output


def test_demo_stopped_names_the_model_trained_so_far(monkeypatch, tmp_path):
    from emorl_cli import demo

    def stop(out_dir, **_):
        checkpoint = Path(out_dir) / "run-20260101-000000" / "checkpoints" / "step_0000005.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"weights")
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(demo, "run_demo", stop)
    result = invoke("demo", "--out", tmp_path / "d")
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM; the data in" in result.output and "step_0000005.pt" in result.output
    assert "--checkpoint" in result.output


def test_data_fetch_stopped_says_partial_downloads_resume(monkeypatch, tmp_path):
    from emorl_cli.data import zenodo

    def stop(*_args, **_kwargs):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(zenodo, "fetch_zenodo", stop)
    result = invoke("data", "fetch", "--zenodo", "--dest", tmp_path / "d")
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM; the verified files in" in result.output and "resumes" in result.output


# ------------------------------------------------------------------------------ sweeps


def test_sigterm_to_a_sweep_stops_its_trainings_and_names_the_runs_that_resume(data, tmp_path):
    out = tmp_path / "sweep"
    lock = out / "seed=1" / LOCK_NAME
    proc = start("sweep", "demo", "--seeds", "1", "--data-dir", data, "--out", out, *LONG)
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().strip() != "", 180, "training of seed=1", proc)
        child = json.loads(lock.read_text())["pid"]
        code, err = stopped(proc, signal.SIGTERM)
    finally:
        proc.kill()
    line = the_error_line(err)
    assert code == 143, err
    assert "stopped by SIGTERM; sweep interrupted; 1 running run(s) (seed=1) stopped" in line
    assert "run the same command again to resume" in line
    assert not pid_alive(child)  # the training stopped with the sweep
    log = (out / "seed=1" / "train.log").read_text()
    assert "stopped by SIGINT" in log  # and said, in its log, what it kept


def test_a_run_another_sweep_trains_is_skipped_with_a_note_not_failed(data, tmp_path):
    out = tmp_path / "sweep"
    holder = hold_lock_in_another_process(out / "seed=1")
    try:
        result = invoke("sweep", "demo", "--seeds", "1", "--data-dir", data, "--out", out, *LONG)
    finally:
        holder.communicate(input="", timeout=30)
    assert result.exit_code == 0, result.output
    assert "note: seed=1 left to another process that trains it (PID" in result.output
    assert not (out / "seed=1" / "train.log").exists()  # no training was started for it


def test_a_run_taken_by_another_sweep_between_the_check_and_the_start_is_held_not_failed(data, tmp_path, monkeypatch):
    from emorl_cli.experiments import sweep as sweep_module

    out = tmp_path / "sweep"
    checks = []
    real = sweep_module.folder_holder

    def free_at_the_first_check(folder):
        """As when the other sweep takes the folder just after this one found it free."""
        checks.append(folder)
        return real(folder) if len(checks) > 1 else None

    monkeypatch.setattr(sweep_module, "folder_holder", free_at_the_first_check)
    holder = hold_lock_in_another_process(out / "seed=1")
    try:
        result = invoke("sweep", "demo", "--seeds", "1", "--data-dir", data, "--out", out, *LONG)
    finally:
        holder.communicate(input="", timeout=30)
    assert result.exit_code == 0, result.output
    assert "is in use by another emorl process" in (out / "seed=1" / "train.log").read_text()  # it did start
    assert "note: seed=1 left to another process" in result.output and "runs failed" not in result.output


def test_the_global_threads_option_is_every_sweep_run_s_thread_count(data, tmp_path, monkeypatch):
    from emorl_cli.experiments import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "cpu_count", lambda: 8)
    plans = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda plan, on_change: plans.append(plan) or [])
    before = torch.get_num_threads()
    try:
        result = invoke("--threads", 1, "sweep", "demo", "--seeds", "1", "--jobs", 1, "--data-dir", data,
                        "--out", tmp_path / "s")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert plans[-1].threads == 1 and "--threads" in plans[-1].command(plans[-1].runs[0], False)
        again = invoke("sweep", "demo", "--seeds", "1,2", "--jobs", 2, "--data-dir", data, "--out", tmp_path / "t")
        assert again.exit_code == 0, again.output
        assert plans[-1].threads == 4  # without it, the cores are split between the jobs
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "seeds, phrase",
    [
        ("1-100000000", "gives 100,000,000 seeds, more than the 10,000 runs a sweep takes"),
        ("-1", "leaves the seeds' range 0 to 4294967295"),
        ("4294967296", "leaves the seeds' range 0 to 4294967295"),
    ],
)
def test_sweep_seed_lists_are_bounded_before_they_are_listed(tmp_path, seeds, phrase):
    started = time.monotonic()
    result = invoke("sweep", "demo", "--seeds", seeds, "--out", tmp_path / "s")
    assert result.exit_code == 1 and phrase in result.output, result.output
    assert time.monotonic() - started < 10
    assert not (tmp_path / "s").exists()
