"""No file emorl writes in a folder it was given follows a link planted there.

Every test plants a symbolic link (or a hard link, or a FIFO) where emorl writes — the lock file, a sweep's
`train.log`, a partial download, `metrics.jsonl`, a run's `checkpoints/` folder — pointing at a file or
folder outside, then runs the command and checks that the outside file is untouched (or was never created)
and that the command stopped with one line naming the link.
"""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import TINY, set_options
from test_data_fetch import payload
from test_reliability import one_error_line

from emorl_cli.data.synth import synthesize
from emorl_cli.errors import OutputError
from emorl_cli.locks import lock_folder
from emorl_cli.training.run_logs import MetricsLog

# (helpers this change added are imported inside the tests that use them, so that the other tests run, and
# fail for the behaviour they check, on a version without them)
LOCK_NAME = ".emorl-lock"
SECRET = "precious bytes outside the folder\n"


@pytest.fixture
def outside(tmp_path):
    """A file outside every folder a command is given, and the path of one that does not exist yet."""
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text(SECRET)
    return victim, tmp_path / "outside" / "created-through-a-link.txt"


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("links-data")
    synthesize("tetrominoes", folder, 16, 8, seed=3)
    return folder


def assert_untouched(outside_files) -> None:
    victim, dangling = outside_files
    assert victim.read_text() == SECRET
    assert not dangling.exists()


# ------------------------------------------------------------------------------------------------ the helper


@pytest.mark.parametrize("mode", ["a", "w", "r+", "ab"])
@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link"])
def test_open_for_writing_refuses_every_kind_of_link(tmp_path, outside, mode, kind):
    from emorl_cli.files import open_for_writing

    victim, dangling = outside
    path = tmp_path / "log.txt"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling symlink":
        path.symlink_to(dangling)
    else:
        os.link(victim, path)
    with pytest.raises(OutputError, match="never writes through a link") as caught:
        open_for_writing(path, mode)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert_untouched(outside)


def test_open_for_writing_refuses_a_fifo_without_waiting_for_a_reader(tmp_path):
    from emorl_cli.files import open_for_writing

    fifo = tmp_path / "train.log"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a plain file"):
        open_for_writing(fifo, "a")


def test_open_for_writing_appends_and_creates_plain_files(tmp_path):
    from emorl_cli.files import open_fd_for_writing, open_for_writing

    path = tmp_path / "log.txt"
    for line in ("one\n", "two\n"):
        with open_for_writing(path, "a") as handle:
            handle.write(line)
    assert path.read_text() == "one\ntwo\n"
    fd = open_fd_for_writing(tmp_path / "lock", "r+")
    os.close(fd)
    assert (tmp_path / "lock").is_file()


def test_inner_folder_refuses_a_planted_folder_link_but_not_a_linked_root(tmp_path):
    from emorl_cli.files import inner_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "run"
    root.mkdir()
    (root / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        inner_folder(root, "checkpoints")
    linked_root = tmp_path / "linked-run"
    linked_root.symlink_to(root, target_is_directory=True)  # a user's own --out may be a link
    assert inner_folder(linked_root, "tb").is_dir()


# ------------------------------------------------------------------------------------------------ commands


@pytest.mark.parametrize("dangling", [False, True])
def test_a_planted_lock_link_is_refused_by_data_synth_and_the_target_is_untouched(cli, tmp_path, outside, dangling):
    out = tmp_path / "D"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(outside[1] if dangling else outside[0])
    line = one_error_line(cli("data", "synth", "tetrominoes", "--out", out, "--train", "4", "--test", "2"))
    assert LOCK_NAME in line and "symbolic link" in line
    assert_untouched(outside)
    assert not list(out.glob("*.h5"))  # refused before the work


def test_a_planted_lock_link_is_refused_by_train(cli, tmp_path, outside, synth_data):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(outside[0])
    tiny = set_options(*TINY, "training.iters=1")
    line = one_error_line(cli("train", "demo", "--cpu", "--data-dir", synth_data, "--out", run, *tiny))
    assert "symbolic link" in line
    assert_untouched(outside)


def test_lock_folder_refuses_a_hard_linked_lock_file(tmp_path, outside):
    folder = tmp_path / "D"
    folder.mkdir()
    os.link(outside[0], folder / LOCK_NAME)
    with pytest.raises(OutputError, match="hard link"):
        lock_folder(folder, "emorl data synth", advice="wait")
    assert_untouched(outside)


def test_a_planted_checkpoints_link_is_refused_by_train(cli, tmp_path, synth_data):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    tiny = set_options(*TINY, "training.iters=1", "training.checkpoint_every=1")
    line = one_error_line(cli("train", "demo", "--cpu", "--data-dir", synth_data, "--out", run, *tiny))
    assert "checkpoints" in line and "symbolic link" in line
    assert list(elsewhere.iterdir()) == []


def test_metrics_log_never_appends_through_a_link(tmp_path, outside):
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(outside[0])
    with pytest.raises(OutputError, match="symbolic link"):
        MetricsLog(path).write(1, {"loss": 1.0})
    assert_untouched(outside)


def test_a_sweep_never_appends_to_a_planted_train_log_link(cli, tmp_path, outside, synth_data):
    out = tmp_path / "S"
    (out / "seed=1").mkdir(parents=True)
    (out / "seed=1" / "train.log").symlink_to(outside[0])
    tiny = set_options(*TINY, "training.iters=1")
    line = one_error_line(cli("sweep", "demo", "--seeds", "1", "--out", out, "--data-dir", synth_data, *tiny))
    assert "train.log" in line and "symbolic link" in line
    assert_untouched(outside)


def test_a_planted_seed_folder_link_is_refused_by_a_sweep(cli, tmp_path, synth_data):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "S"
    out.mkdir()
    (out / "seed=1").symlink_to(elsewhere, target_is_directory=True)
    tiny = set_options(*TINY, "training.iters=1")
    line = one_error_line(cli("sweep", "demo", "--seeds", "1", "--out", out, "--data-dir", synth_data, *tiny))
    assert "seed=1" in line and "symbolic link" in line
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_a_planted_partial_download_link_is_refused_by_data_fetch(cli, fake, tmp_path, outside, dangling):
    fake.files["tetrominoes.h5"] = payload(4096, seed=1)
    dest = tmp_path / "D"
    dest.mkdir()
    (dest / "tetrominoes.h5.part").symlink_to(outside[1] if dangling else outside[0])
    args = ["--retries", "0", "--backoff", "0", "--timeout", "5"]
    line = one_error_line(cli("data", "fetch", "--zenodo", "--base-url", fake.url, "--dest", dest, *args))
    assert "tetrominoes.h5.part" in line and "symbolic link" in line
    assert_untouched(outside)
    assert not (dest / "tetrominoes.h5").exists()


def test_a_planted_folder_link_inside_the_destination_is_refused_by_data_fetch(cli, fake, tmp_path):
    fake.files["sub/tetrominoes.h5"] = payload(1024, seed=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "D"
    dest.mkdir()
    (dest / "sub").symlink_to(elsewhere, target_is_directory=True)
    args = ["--retries", "0", "--backoff", "0", "--timeout", "5"]
    line = one_error_line(cli("data", "fetch", "--zenodo", "--base-url", fake.url, "--dest", dest, *args))
    assert "symbolic link" in line
    assert list(elsewhere.iterdir()) == []
    shutil.rmtree(dest)


def test_resume_refuses_a_checkpoints_folder_replaced_by_a_link(cli, tmp_path, synth_data):
    run = tmp_path / "run"
    tiny = set_options(*TINY, "training.checkpoint_every=1")
    first = cli("train", "demo", "--cpu", "--data-dir", synth_data, "--out", run, *tiny, "--set", "training.iters=1")
    assert first.exit_code == 0, first.output
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "checkpoints", elsewhere)
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    again = cli("train", "demo", "--cpu", "--data-dir", synth_data, "--resume", run, *tiny, "--set", "training.iters=2")
    line = one_error_line(again)
    assert "checkpoints" in line and "symbolic link" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_the_demo_refuses_a_planted_data_link_before_any_work(cli, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "demo"
    out.mkdir()
    (out / "data").symlink_to(elsewhere, target_is_directory=True)
    line = one_error_line(cli("demo", "--out", out, "--minutes", "1"))
    assert "data" in line and "symbolic link" in line
    assert list(elsewhere.iterdir()) == []
