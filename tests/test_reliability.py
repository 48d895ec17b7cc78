"""Two runs on one folder, empty files, full disks and bad numbers: nothing is lost, and one line is printed.

Each test names the case it holds (the numbered list of "What emorl guarantees" in the README). Full and
read-only disks are simulated where the operating system cannot be asked to (the tests may run as root,
which ignores permissions): by a file-size limit (RLIMIT_FSIZE, a real refusal of the kernel) or by writes
that raise the errno a full or read-only disk raises.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fake_server import FakeZenodo
from helpers import TINY, hold_lock_in_another_process, one_error_line, set_options, subprocess_env, tiny_config
from test_data_fetch import payload
from typer.testing import CliRunner

from emorl_cli import demo as demo_module
from emorl_cli import files as files_module
from emorl_cli.cli.app import app
from emorl_cli.config import load_config
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.data.synth import synthesize
from emorl_cli.evaluate.ari_report import summarize
from emorl_cli.files import atomic_path, atomic_write_json
from emorl_cli.model.emorl import EfficientMORL
from emorl_cli.training.loop import train
from emorl_cli.training.rundir import RunDir

# (the modules and names this issue added are imported inside the tests that use them, so that the other
# tests run, and fail for the behaviour they check, on a version without them)
LOCK_NAME = ".emorl-lock"

runner = CliRunner()
EMORL = [sys.executable, "-m", "emorl_cli"]
TRAIN_TINY = set_options(*TINY, "training.checkpoint_every=1")


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """ROOT/data (synthetic Tetrominoes) and ROOT/run (2 steps, checkpoints at steps 1 and 2)."""
    root = tmp_path_factory.mktemp("reliability")
    synthesize("tetrominoes", root / "data", 32, 16, seed=4)
    cfg = tiny_config("training.iters=2", "training.checkpoint_every=1")
    train(cfg, root / "run", data_dir=root / "data", show_progress=False)
    return root


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


def checkpoint_of(trained: Path) -> Path:
    return trained / "run" / "checkpoints" / "step_0000002.pt"


# ------------------------------------------------------------------------------ 1, 2: one process per folder


def test_a_folder_lock_is_exclusive_across_processes_and_names_its_holder(tmp_path):
    from emorl_cli import locks
    from emorl_cli.locks import lock_folder

    assert locks.LOCK_NAME == LOCK_NAME
    holder = hold_lock_in_another_process(tmp_path / "f")
    try:
        with pytest.raises(Exception, match=f"in use by another emorl process \\(PID {holder.pid}, `emorl train`"):
            lock_folder(tmp_path / "f", "emorl train", advice="wait")
    finally:
        holder.communicate("")  # the holder releases and exits
    with lock_folder(tmp_path / "f", "emorl train", advice="wait") as lock:
        assert lock.held and json.loads((tmp_path / "f" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "f" / LOCK_NAME).exists()  # a clean release removes the file


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(tmp_path, caplog):
    from emorl_cli.locks import lock_folder

    holder = hold_lock_in_another_process(tmp_path / "f")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "f" / LOCK_NAME).exists()  # kill -9 left the file behind
    with caplog.at_level("WARNING", logger="emorl"), lock_folder(tmp_path / "f", "emorl train", advice="x"):
        pass
    assert f"from PID {holder.pid}" in caplog.text and "no longer running" in caplog.text


def test_case1_second_fetch_into_the_same_dest_is_refused_and_the_first_ends_verified(tmp_path):
    fake = FakeZenodo()
    fake.thread.start()
    try:
        data = payload(600_000, 11)
        release = threading.Event()
        fake.files = {"tetrominoes.h5": data}
        fake.hold_once["tetrominoes.h5"] = (200_000, release)
        args = ["data", "fetch", "--zenodo", "--dest", tmp_path, "--base-url", fake.url, "--retries", "0"]
        first = subprocess.Popen(
            EMORL + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=subprocess_env(),
        )  # fmt: skip
        for _ in range(300):  # until the first fetch is mid-transfer
            if (tmp_path / "tetrominoes.h5.part").exists() and fake.file_gets("tetrominoes.h5"):
                break
            time.sleep(0.1)
        second = invoke(*args)
        release.set()
        out, _ = first.communicate(timeout=120)
    finally:
        release.set()
        fake.server.shutdown()
        fake.server.server_close()
    line = one_error_line(second)
    assert f"PID {first.pid}" in line and "emorl data fetch" in line
    assert first.returncode == 0, out
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"]["tetrominoes.h5"]["size"] == len(data)
    assert len(fake.file_gets("tetrominoes.h5")) == 1  # the second fetch never downloaded


def test_case2_second_train_and_resume_on_a_busy_run_folder_are_refused_then_resume_takes_over(trained, tmp_path):
    run = tmp_path / "busy"
    cmd = EMORL + ["--threads", "1", "train", "demo", "--cpu", "--data-dir", str(trained / "data"), "--out", str(run)]
    cmd += set_options(*TINY, "training.checkpoint_every=1", "training.iters=100000")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        for _ in range(600):
            if RunDir(run).latest_checkpoint() is not None:
                break
            time.sleep(0.1)
        assert RunDir(run).latest_checkpoint() is not None, "the first run wrote no checkpoint"
        short = ["--set", "training.iters=1"]
        again = invoke("train", "demo", "--data-dir", trained / "data", "--out", run, *TRAIN_TINY, *short)
        resume = invoke("train", "demo", "--data-dir", trained / "data", "--resume", run, *TRAIN_TINY, *short)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    for result in (again, resume):
        line = one_error_line(result)
        assert f"PID {first.pid}" in line and "in use by another emorl process" in line
    step = int(RunDir(run).latest_checkpoint().stem.split("_")[1])
    after = invoke("train", "demo", "--data-dir", trained / "data", "--resume", run, *TRAIN_TINY,
                   "--set", f"training.iters={step + 1}")  # fmt: skip
    assert after.exit_code == 0, after.output
    assert f"took over the lock of {run} from PID {first.pid}" in after.output
    assert "no longer running" in after.output
    assert not (run / LOCK_NAME).exists()


# ------------------------------------------------------------------------------ 3: empty and cut-off files


def test_case3_atomic_writes_sync_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        return real_fsync(fd)

    def replace(src, dst):
        calls.append("rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert calls == ["fsync file", "rename", "fsync folder"]
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


@pytest.mark.parametrize("damage", ["empty", "cut in half"])
@pytest.mark.parametrize("command", ["eval ari", "viz", "train --resume"])
def test_case3_an_empty_or_truncated_checkpoint_is_one_line(trained, run_copy, tmp_path, damage, command):
    latest = run_copy / "checkpoints" / "step_0000002.pt"
    whole = latest.read_bytes()
    latest.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])
    data = ["--data-dir", trained / "data"]
    if command == "eval ari":
        result = invoke("eval", "ari", "--checkpoint", latest, *data, "--out", tmp_path / "e")
    elif command == "viz":
        result = invoke("viz", "--checkpoint", latest, *data, "--out", tmp_path / "v")
    else:
        result = invoke("train", "demo", *data, "--resume", run_copy, *TRAIN_TINY, "--set", "training.iters=4")
    line = one_error_line(result)
    assert str(latest) in line
    assert ("empty (0 bytes)" if damage == "empty" else "truncated or damaged") in line
    if command == "train --resume":
        assert "resume from step_0000001.pt instead" in line


def test_case3_a_checkpoint_the_disk_cannot_hold_stops_training_with_one_line(trained, tmp_path):
    """A real refusal by the kernel (RLIMIT_FSIZE: 'File too large'), which also applies to root."""
    limit = "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    limit += "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY)); "
    limit += "import sys; from emorl_cli.cli.app import main; sys.argv = ['emorl'] + sys.argv[1:]; main()"
    cmd = [sys.executable, "-c", limit, "train", "demo", "--cpu", "--data-dir", str(trained / "data")]
    cmd += ["--out", str(tmp_path / "run")] + TRAIN_TINY + ["--set", "training.iters=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert "step_0000001.pt (File too large)" in errors[0] and "stopped at step 1" in errors[0]
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # nothing half-written under any name


# ------------------------------------------------------------------------------ 4: a torn metrics line


def test_case4_resume_ignores_a_torn_last_metrics_line_and_says_so(trained, run_copy):
    with (run_copy / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 2, "loss": 12')  # a crash while appending
    result = invoke("train", "demo", "--data-dir", trained / "data", "--resume", run_copy, *TRAIN_TINY,
                    "--set", "training.iters=4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ignored its last line, which was cut off" in result.output
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ 5: outputs that cannot be written


def _output_commands(trained: Path, out: Path) -> dict[str, list]:
    ckpt, data = checkpoint_of(trained), ["--data-dir", trained / "data"]
    return {
        "train": ["train", "demo", *data, "--out", out, *TRAIN_TINY, "--set", "training.iters=2"],
        "eval ari": ["eval", "ari", "--checkpoint", ckpt, *data, "--out", out],
        "eval dci": ["eval", "dci", "--checkpoint", ckpt, *data, "--out", out],
        "viz": ["viz", "--checkpoint", ckpt, *data, "--out", out],
        "gifs": ["gifs", "--checkpoint", ckpt, *data, "--out", out],
        "tune-geco": ["tune-geco", "demo", *data, "--out", out, "--pilot-steps", "10", *set_options(*TINY)],
        "data info --preview": ["data", "info", trained / "data" / "tetrominoes.h5", "--preview", out / "p.png"],
    }


@pytest.mark.parametrize(
    "command", ["train", "eval ari", "eval dci", "viz", "gifs", "tune-geco", "data info --preview"]
)
def test_case5_an_output_path_that_is_a_file_is_one_line(trained, tmp_path, command):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    line = one_error_line(invoke(*_output_commands(trained, blocker)[command]))
    assert f"{blocker} is a file, not a folder" in line


def _invoke_with_failing_writes(monkeypatch, folder: Path, code: int, args: list, after: int = 0):
    """Run `emorl ARGS` while writes into `folder` fail with errno `code` (after `after` bytes), as on a full
    or read-only disk; `open` is back to normal before the test's assertions."""
    real_open = io.open
    budget = [after]

    class Failing(io.FileIO):
        def write(self, data):
            if budget[0] < len(data):
                raise OSError(code, os.strerror(code))
            budget[0] -= len(data)
            return super().write(data)

    def fake_open(file, mode="r", *args, **kwargs):
        inside = isinstance(file, (str, os.PathLike)) and str(Path(file).resolve()).startswith(str(folder.resolve()))
        if inside and any(c in mode for c in "wax+") and "b" in mode:
            return Failing(file, mode.replace("b", ""))
        if inside and any(c in mode for c in "wax+"):
            return io.TextIOWrapper(Failing(file, mode.replace("t", "")), encoding=kwargs.get("encoding") or "utf-8")
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", fake_open)
        patch.setattr(io, "open", fake_open)
        return invoke(*args)


@pytest.mark.parametrize("command", ["eval ari", "eval dci", "viz", "gifs", "tune-geco", "data info --preview"])
def test_case5_a_read_only_output_folder_is_refused_before_the_work(trained, tmp_path, monkeypatch, command):
    out = tmp_path / "ro"
    out.mkdir()
    started = []
    real_forward = EfficientMORL.forward
    monkeypatch.setattr(EfficientMORL, "forward", lambda *a, **k: started.append(1) or real_forward(*a, **k))
    result = _invoke_with_failing_writes(monkeypatch, out, errno.EROFS, _output_commands(trained, out)[command])
    line = one_error_line(result)
    assert str(out) in line and "Read-only file system" in line
    assert not started  # refused before any image was inferred (or any pilot step trained)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_case5_a_folder_without_write_permission_is_one_line(trained, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = one_error_line(invoke(*_output_commands(trained, out)["eval ari"]))
    finally:
        out.chmod(0o755)
    assert str(out) in line and "Permission denied" in line


@pytest.mark.parametrize("command", ["eval ari", "viz", "gifs", "train"])
def test_case5_a_full_disk_is_one_line_naming_the_file(trained, tmp_path, monkeypatch, command):
    out = tmp_path / "full"
    out.mkdir()
    args = _output_commands(trained, out)[command]
    result = _invoke_with_failing_writes(monkeypatch, out, errno.ENOSPC, args, after=200)  # full after 200 bytes
    line = one_error_line(result)
    assert str(out) in line and "No space left on device" in line and "the disk is full" in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left behind


# ------------------------------------------------------------------------------ 6, 7: numbers on the command line


def _count_cases(trained: Path) -> list[tuple[list, str]]:
    ckpt, data = checkpoint_of(trained), ["--data-dir", trained / "data"]
    ari = ["eval", "ari", "--checkpoint", ckpt, *data]
    fetch = ["data", "fetch", "--zenodo", "--retries", "0", "--dest", "fetched"]
    return [
        (ari + ["--refinement-iters", "-1"], "--refinement-iters must be at least 0"),
        (["viz", "--checkpoint", ckpt, *data, "--out", "v", "-I", "-1"], "--refinement-iters must be at least 0"),
        (ari + ["--num-images", "-5"], "--num-images must be at least 1"),
        (ari + ["--num-images", "0"], "--num-images must be at least 1"),
        (ari + ["--batch-size", "-3"], "--batch-size must be at least 1"),
        (ari + ["--batch-size", "0"], "--batch-size must be at least 1"),
        (ari + ["--samples", "0"], "--samples must be at least 1"),
        (["eval", "dci", "--checkpoint", ckpt, *data, "--num-images", "0"], "--num-images must be at least 1"),
        (["eval", "dci", "--checkpoint", ckpt, *data, "--estimators", "0"], "--estimators must be at least 1"),
        (["eval", "activeness", "--checkpoint", ckpt, *data, "--num-images", "0"], "--num-images must be at least 1"),
        (["bench", "demo", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["bench", "demo", "--steps", "0"], "--steps must be at least 1"),
        (["gifs", "--checkpoint", ckpt, *data, "--out", "g", "--frames", "0"], "--frames must be at least 2"),
        (["gifs", "--checkpoint", ckpt, *data, "--out", "g", "--top-k", "0"], "--top-k must be at least 1"),
        (["viz", "--checkpoint", ckpt, *data, "--out", "v", "--num-images", "0"], "--num-images must be at least 1"),
        (fetch + ["--base-url", "http://127.0.0.1:9", "--timeout", "nan"], "--timeout must be a finite number"),
        (fetch + ["--base-url", "http://[::1"], "'http://[::1' is not a valid URL"),
        (["data", "fetch", "--zenodo", "--dest", "fetched", "--retries", "-1"], "--retries must be at least 0"),
        (["data", "synth", "tetrominoes", "--out", "s", "--train", "-1"], "--train must be at least 0"),
        (["data", "info", "x.h5", "--preview", "p.png", "--count", "0"], "--count must be at least 1"),
        (["models", "fetch", "tetrominoes", "--dest", "m", "--backoff", "-1"], "--backoff must be at least 0"),
    ]


def test_case6_and_7_every_count_option_out_of_range_is_one_line_naming_it(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, phrase in _count_cases(trained):
        line = one_error_line(invoke(*args))
        assert phrase in line and args[-1] in line, (args, line)  # the option, its range and the value seen


# ------------------------------------------------------------------------------ 8: sizes and memory


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("model.K=100000", "model.K: must be at most 64"),
        ("model.stochastic_layers=100000", "model.stochastic_layers: must be at most 16"),
        ("model.refinement_iters=100000", "model.refinement_iters: must be at most 64"),
        ("model.z_size=100000", "model.z_size: must be at most 1024"),
        ("training.refinement_curriculum=[[-1, 5000]]", "must be at most 64"),
    ],
)
def test_case8_sizes_beyond_understandable_limits_fail_validation(override, phrase):
    result = invoke("config", "validate", "demo", "--set", override)
    assert result.exit_code == 1 and phrase in result.output, result.output
    assert f"--set {override} is invalid" in result.output


def test_case8_a_config_too_big_for_memory_is_refused_with_the_estimate_before_allocating(trained, tmp_path):
    result = invoke("train", "demo", "--data-dir", trained / "data", "--out", tmp_path / "big",
                    "--set", "training.batch_size=100000")  # fmt: skip
    line = one_error_line(result)
    assert "training needs at least about" in line and "GB free" in line and "training.batch_size" in line
    assert not (tmp_path / "big" / "checkpoints").exists()


def test_the_memory_estimate_follows_the_decoder_width():
    """A narrower decoder (`model.decoder_width`) keeps fewer activations: its part of the estimate shrinks in
    proportion, so a narrow 64×64 config is not refused for memory a paper-width decoder would need."""
    from emorl_cli.training.memory import training_step_bytes

    def estimate(width):
        return training_step_bytes(load_config("demo_multi_dsprites", [f"model.decoder_width={width}"]), 16)

    # the decoder part is linear in the width, the rest (encoder, parameters) nearly fixed
    assert estimate(16) < estimate(32) < estimate(64)
    assert (estimate(64) - estimate(32)) == pytest.approx(2 * (estimate(32) - estimate(16)), rel=0.02)


def test_case8_the_memory_estimate_is_a_lower_bound_of_a_measured_step():
    """Oracles: the peak RSS of one real training step (in a fresh process) is at least the estimate, and the
    estimate is at least half of what the step's autograd graph saves for the backward pass."""
    from emorl_cli.accelerator import make_accelerator
    from emorl_cli.training.memory import training_step_bytes
    from emorl_cli.training.step import StepRunner

    cfg = load_config("demo", ["training.mixed_precision=no", "training.batch_size=8"])
    estimate = training_step_bytes(cfg, 8)
    code = f"""
import os, resource, torch
from emorl_cli.config import load_config
from emorl_cli.accelerator import make_accelerator
from emorl_cli.training.step import StepRunner
cfg = load_config("demo", {["training.mixed_precision=no", "training.batch_size=8"]!r})
runner = StepRunner(cfg, make_accelerator("no", cpu=True))
images = torch.rand(8, 3, 35, 35) * 2 - 1
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
runner(cfg.geco.warm_start + 1, images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert estimate <= int(done.stdout.split()[-1])

    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    runner = StepRunner(cfg, make_accelerator("no", cpu=True))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        runner(cfg.geco.warm_start + 1, torch.rand(8, 3, 35, 35) * 2 - 1)
    assert 0.5 * sum(storages.values()) <= estimate


# ------------------------------------------------------------------------------ 9, 10: inputs checked first


def _copy_with_images(src: Path, dst: Path, split: str, images: np.ndarray) -> None:
    with h5py.File(src) as a, h5py.File(dst, "w") as b:
        group = b.create_group(split)
        group["imgs"] = images
        group["masks"] = a[f"{split}/masks"][()]


@pytest.mark.parametrize("scale, phrase", [(1000.0, "values from 0 to 255000"), (1 / 255, "looks like the range 0..1")])
def test_case9_float_images_outside_0_to_255_are_refused_when_the_split_opens(trained, tmp_path, scale, phrase):
    folder = tmp_path / "data"
    folder.mkdir()
    with h5py.File(trained / "data" / "tetrominoes.h5") as f:
        imgs = f["train/imgs"][()].astype(np.float64) * scale
    _copy_with_images(trained / "data" / "tetrominoes.h5", folder / "tetrominoes.h5", "train", imgs)
    result = invoke("train", "demo", "--data-dir", folder, "--out", tmp_path / "run", *TRAIN_TINY,
                    "--set", "training.iters=2")  # fmt: skip
    line = one_error_line(result)
    assert "'train/imgs' (float64)" in line and phrase in line


def test_case9_float_images_within_0_to_255_are_accepted(trained, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with h5py.File(trained / "data" / "tetrominoes.h5") as f:
        imgs = f["train/imgs"][()].astype(np.float32)
    _copy_with_images(trained / "data" / "tetrominoes.h5", folder / "tetrominoes.h5", "train", imgs)
    result = invoke("train", "demo", "--data-dir", folder, "--out", tmp_path / "run", *TRAIN_TINY,
                    "--set", "training.iters=1")  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("minutes", ["nan", "inf", "-inf"])
def test_case10_demo_refuses_a_budget_that_is_not_a_finite_number(tmp_path, monkeypatch, minutes):
    def started(*args, **kwargs):
        raise AssertionError("the demo started")

    monkeypatch.setattr(demo_module, "run_demo", started)
    line = one_error_line(invoke("demo", "--out", tmp_path / "d", "--minutes", minutes))
    assert "--minutes must be a finite number" in line and minutes in line
    assert not (tmp_path / "d").exists()


def test_case10_demo_checks_its_checkpoint_before_synthesising_data(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_TRAIN_IMAGES", 64)  # quick to make, should it be made at all
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    line = one_error_line(invoke("demo", "--out", tmp_path / "d", "--checkpoint", bad))
    assert "empty (0 bytes)" in line
    assert not (tmp_path / "d" / "data").exists()


# ------------------------------------------------------------------------------ 11: names emorl keeps


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("member", [MANIFEST_NAME, LOCK_NAME, f"sub/{MANIFEST_NAME}"])
def test_case11_archive_members_named_like_emorls_own_files_are_refused(tmp_path, member):
    fake = FakeZenodo()
    fake.thread.start()
    try:
        fake.files = {"d.zip": _zip({"a.txt": b"hello", member: b'{"files": {}}'})}
        result = invoke("data", "fetch", "--zenodo", "--dest", tmp_path, "--base-url", fake.url, "--retries", "0")
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    line = one_error_line(result)
    assert repr(member) in line and "emorl keeps for its own bookkeeping" in line
    assert not (tmp_path / "a.txt").exists()
    assert not (tmp_path / "sub").exists()


# ------------------------------------------------------------------------------ 12: strict JSON


def test_case12_summary_of_all_nan_values_is_null_with_a_skip_count_and_no_warning():
    rows = [{"index": i, "samples": 1, "fg_ari": float("nan"), "fg_ari_std": float("nan")} for i in range(3)]
    rows[0].update(mse=0.5, mse_std=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" would fail here
        summary = summarize(rows)
    assert summary["fg_ari"] == {"mean": None, "std": None, "n": 0, "skipped": 3, "sample_std": None}
    assert summary["mse"]["mean"] == 0.5 and summary["mse"]["skipped"] == 0


def test_case12_eval_on_images_without_foreground_writes_strict_json(trained, tmp_path):
    test = tmp_path / "background_only.h5"
    with h5py.File(trained / "data" / "tetrominoes_test.h5") as a, h5py.File(test, "w") as b:
        group = b.create_group("test")
        group["imgs"] = a["test/imgs"][()]
        masks = np.zeros_like(a["test/masks"][()])
        masks[:, 0] = 255  # every pixel is background: FG-ARI is undefined for every image
        group["masks"] = masks
    result = invoke("eval", "ari", "--checkpoint", checkpoint_of(trained), "--data", test, "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "Mean of empty slice" not in result.output and "n/a (all 16 images skipped)" in result.output

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    results = json.loads((tmp_path / "e" / "results.json").read_text(), parse_constant=no_constants)
    assert results["metrics"]["fg_ari"]["mean"] is None and results["metrics"]["fg_ari"]["skipped"] == 16
    assert results["metrics"]["mse"]["mean"] > 0


# ------------------------------------------------------------------------------ 13: stale temporary files


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_case13_resume_removes_temporary_files_of_interrupted_writes(trained, run_copy):
    host = getattr(files_module, "_HOST", "localhost")
    stale = [
        run_copy / "checkpoints" / f".step_0000003.pt.{_dead_pid()}@{host}.0123abcd.tmp",  # killed mid-write
        run_copy / "checkpoints" / ".step_0000003.pt.k2j4_x9q.tmp",  # an earlier emorl's name
    ]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    result = invoke("train", "demo", "--data-dir", trained / "data", "--resume", run_copy, *TRAIN_TINY,
                    "--set", "training.iters=3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in stale)
    assert "removed 2 temporary files (2,000 bytes)" in result.output


def test_case13_atomic_writes_remove_only_the_temporary_files_of_writers_that_are_gone(tmp_path):
    from emorl_cli.files import remove_stale_temp_files

    host = getattr(files_module, "_HOST", "localhost")
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = tmp_path / f".a.json.{_dead_pid()}@{host}.0123abcd.tmp"
        live = tmp_path / f".b.json.{alive.pid}@{host}.0123abcd.tmp"
        other = tmp_path / ".c.json.k2j4_x9q.tmp"  # names no writer: kept unless the folder is held
        for path in (dead, live, other):
            path.write_text("partial")
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        assert not dead.exists() and live.exists() and other.exists()
        remove_stale_temp_files(tmp_path, owned_folder=True)
        assert live.exists() and not other.exists()
    finally:
        alive.communicate(b"")


# ------------------------------------------------------------------------------ 14: messages that keep their sense


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo ran > ran.txt",))


def test_case14_a_code_running_pickle_is_refused_saying_why_and_never_suggesting_to_trust_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": _RunsCode()}, tmp_path / "evil.pt")
    line = one_error_line(invoke("eval", "ari", "--checkpoint", tmp_path / "evil.pt", "--data-dir", tmp_path))
    assert "could run arbitrary code" in line and "GLOBAL" in line
    assert "weights_only" not in line  # no hint at switching the safe loader off
    assert not (tmp_path / "ran.txt").exists()


def test_case14_set_errors_name_the_override_not_the_shipped_file():
    line = one_error_line(invoke("train", "demo", "--set", "model.K=abc", "--set", "training.iters=3"))
    assert line.startswith("error: --set model.K=abc is invalid: model.K:")
    assert "demo.yaml" not in line


def test_case14_a_cut_transfer_counts_its_bytes_exactly(tmp_path):
    fake = FakeZenodo()
    fake.thread.start()
    try:
        fake.files = {"tetrominoes.h5": payload(400_000, 12)}
        fake.cut_once["tetrominoes.h5"] = 399_999
        result = invoke("data", "fetch", "--zenodo", "--dest", tmp_path, "--base-url", fake.url, "--retries", "0")
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    assert "399,999 of 400,000 bytes" in one_error_line(result)
