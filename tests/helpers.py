"""Configs and helpers shared by several test modules."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from emorl_cli.config import load_config

# A small EfficientMORL that trains in well under a second per step on a CPU.
TINY = [
    "model.z_size=8",
    "training.batch_size=2",
    "training.warmup=2",
    "training.log_every=1",
    "training.image_every=1000",
    "training.checkpoint_every=2",
    "training.keep_checkpoints=10",
    "geco.enabled=true",
    "geco.warm_start=1",
    "training.refinement_curriculum=[[-1, 1], [3, 2]]",
    "training.mixed_precision=no",  # the training tests compare numbers in float32
    "model.init_gain=0.02",  # the paper's initialisation (the demo's gain 1 is tested by the demo tests)
    "model.bottom_up_prior=false",  # the paper's reversed prior++ (the demo's bottom-up prior: golden tests)
    "model.reverse_prior_plusplus=true",
    "training.eval_every=0",  # tests of evaluation during training turn it on themselves
]


def set_options(*overrides: str) -> list[str]:
    """CLI arguments `--set A --set B ...` for dotted config overrides."""
    return [arg for item in overrides for arg in ("--set", item)]


def tiny_config(*extra: str):
    return load_config("demo", TINY + list(extra))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_command(*emorl_args: str) -> list[str]:
    """`python -m torch.distributed.run` with two local processes on a free port, running `emorl EMORL_ARGS`."""
    rendezvous = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "emorl_cli", *emorl_args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for an emorl subprocess: one thread per process, this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def one_error_line(result) -> str:
    """The single `error:` line of a command that failed cleanly (exit 1, no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output + repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    return errors[0]


def error_with_phrases(result, *phrases: str) -> None:
    """A clean failure (exit 1, an `error:` line, no traceback) whose message holds every phrase."""
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "error:" in text and "Traceback" not in result.output, result.output
    for phrase in phrases:
        assert phrase in text, result.output


def hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    """A child process holding `folder`'s emorl lock until its stdin closes (`proc.communicate(input="")`)."""
    code = (
        "import sys; from emorl_cli.locks import lock_folder; "
        f"lock = lock_folder({str(folder)!r}, 'emorl train', advice='wait'); print('held', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )
    assert proc.stdout.readline().strip() == "held"
    return proc
