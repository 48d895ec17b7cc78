"""The command tree, version, error boundary and `python -m emorl_cli`."""

import subprocess
import sys

from emorl_cli import __version__

COMMANDS = ["data", "train", "eval", "gifs", "viz", "tune-geco", "demo", "bench", "config", "models"]


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_group_help_lists_subcommands(cli):
    assert all(c in cli("data", "--help").output for c in ["fetch", "synth", "import", "info", "verify"])
    assert all(c in cli("models", "--help").output for c in ["list", "fetch"])
    assert all(c in cli("eval", "--help").output for c in ["ari", "dci"])
    assert all(c in cli("config", "--help").output for c in ["show", "validate", "convert"])


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"emorl {__version__}"


def test_library_error_is_one_red_line_exit_1(cli):
    result = cli("config", "show", "no_such_config")
    assert result.exit_code == 1
    assert "unknown config 'no_such_config'" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_debug_shows_the_exception(cli):
    result = cli("--debug", "config", "show", "no_such_config")
    assert result.exit_code != 0
    assert result.exception is not None and "unknown config" in str(result.exception)


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "emorl_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"emorl {__version__}"


def test_threads_option_sets_torch_threads(cli):
    import torch

    before = torch.get_num_threads()
    try:
        result = cli("--threads", "1", "config", "validate", "demo")
        assert result.exit_code == 0
        assert torch.get_num_threads() == 1
        refused = cli("--threads", "0", "config", "validate", "demo")  # checked while the group's options parse
        assert refused.exit_code == 1 and "--threads must be at least 1" in refused.output
        assert "Traceback" not in refused.output
    finally:
        torch.set_num_threads(before)


def _command_paths() -> list[list[str]]:
    """Every command and group of the tree, as the words that reach it (the root: [])."""
    import typer

    from emorl_cli.cli.app import app

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_command_help_shows_an_example_of_itself(cli):
    paths = _command_paths()
    assert ["eval", "ari"] in paths and ["viz"] in paths and len(paths) >= 25
    for path in paths:
        result = cli(*path, "--help")
        assert result.exit_code == 0, path
        text = " ".join(result.output.split())  # rich wraps long lines
        assert " ".join(["Example: emorl", *path]) in text, f"`emorl {' '.join(path)} --help` shows no example"


INFERENCE_COMMANDS = [["eval", "ari"], ["eval", "dci"], ["eval", "activeness"], ["viz"], ["gifs"]]
SHARED_OPTIONS = [
    "--checkpoint", "--config", "--set", "--data-dir", "--data", "--split", "--num-images", "--batch-size",
    "--refinement-iters", "--seed", "--out",
]  # fmt: skip


def test_the_five_inference_commands_offer_the_same_shared_options():
    """Each shared option is one declaration: the same names and help in all five (--num-images: its own
    default and help per command; --out: required for pictures)."""
    import typer

    from emorl_cli.cli.app import app

    root = typer.main.get_command(app)
    seen: dict[str, set[tuple]] = {}
    for path in INFERENCE_COMMANDS:
        command = root
        for word in path:
            command = command.commands[word]
        params = {param.opts[0]: param for param in command.params if param.opts}
        for name in SHARED_OPTIONS:
            assert name in params, f"emorl {' '.join(path)} lacks {name}"
            if name not in ("--num-images", "--out"):
                seen.setdefault(name, set()).add((tuple(params[name].opts), params[name].help))
    assert all(len(declarations) == 1 for declarations in seen.values()), seen
