"""Bytes that are not what was expected — JSON nested 100,000 deep, text that is not UTF-8, a YAML key given
twice, a folder where a file belongs, a checkpoint holding a numpy array — end in one line naming the file,
never in a traceback, and never in advice to load an untrusted file unsafely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_experiments import fake_run
from test_reliability import one_error_line

from emorl_cli.config import load_config
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.errors import ConfigError


def the_only_line(result) -> str:
    """The `error:` line of a command that failed cleanly and printed nothing else (no continuation lines)."""
    line = one_error_line(result)
    assert [x for x in result.output.splitlines() if x.strip()] == [line], result.output
    return line


DEEP = "[" * 100_000  # deeper than any parser recurses
NOT_UTF8 = b"model:\n  K: \xff\xfe\n"


# ------------------------------------------------------------------------------------------------ JSON


def test_the_json_reader_turns_every_failure_into_one_line_naming_the_file(tmp_path):
    from emorl_cli.json_input import read_json

    cases = {"deep.json": DEEP, "bad.json": '{"a": ', "long.json": "1" * 5000}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    (tmp_path / "list.json").write_text("[1]")
    for name in [*cases, "latin1.json", "list.json", "missing.json"]:
        with pytest.raises(ConfigError) as caught:
            read_json(tmp_path / name, error=ConfigError, expect=dict)
        assert str(tmp_path / name) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="is a folder"):
        read_json(tmp_path, error=ConfigError)


@pytest.mark.parametrize(
    "content", [DEEP.encode(), b"\xff\xfe{}", b'{"files": ' + b"[" * 5000], ids=["deep", "not-utf8", "cut"]
)
def test_a_damaged_manifest_is_one_line_naming_it(cli, tmp_path, content):
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    line = the_only_line(cli("data", "verify", tmp_path))
    assert MANIFEST_NAME in line


def test_a_deeply_nested_zenodo_record_is_one_line(cli, fake, tmp_path):
    fake.record_body = DEEP.encode()
    args = ["--retries", "0", "--backoff", "0", "--timeout", "5"]
    line = the_only_line(cli("data", "fetch", "--zenodo", "--base-url", fake.url, "--dest", tmp_path, *args))
    assert "/api/records/" in line and "nested too deeply" in line


def test_a_deeply_nested_lock_file_is_taken_over(tmp_path):
    from emorl_cli.locks import LOCK_NAME, lock_folder

    (tmp_path / LOCK_NAME).write_text(DEEP)
    with lock_folder(tmp_path, "emorl data synth", advice="wait") as lock:
        assert lock.previous == {}
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "emorl data synth"


def test_report_and_sweep_read_past_damaged_metrics_and_finished_files(tmp_path):
    from emorl_cli.experiments.report import build_report
    from emorl_cli.experiments.sweep import is_finished

    run = fake_run(tmp_path / "seed=1", 1, 7e-4, [0.5, 0.6])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], DEEP, *lines[1:]]) + "\n")
    for finished in (DEEP, "[1, 2]", '{"reason": "iters", "step": "many"}', "\xff"):
        (run / "finished.json").write_text(finished, errors="surrogateescape")
        report = build_report([tmp_path])
        assert report.settings[0].runs[0].rows[-1]["fg_ari"] == 0.6  # the damaged line is skipped, not fatal
        assert not is_finished(run, load_config("demo"))


def test_an_original_config_nested_too_deeply_is_one_line(cli, tmp_path):
    (tmp_path / "EMORL.json").write_text(DEEP)
    line = the_only_line(cli("config", "convert", tmp_path / "EMORL.json"))
    assert "EMORL.json" in line and "nested too deeply" in line


# ------------------------------------------------------------------------------------------------ YAML


def test_a_yaml_key_given_twice_is_refused(cli, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("data:\n  dataset: tetrominoes\nmodel:\n  K: 4\n  K: 7\n")
    line = the_only_line(cli("config", "show", path))
    assert "'K' appears twice" in line and "lines 4 and 5" in line
    with pytest.raises(ConfigError, match="appears twice"):
        load_config("demo", ["model.encoder={a: 1, a: 2}"])


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"model:\n  K: [1, 2\n", "not valid YAML (expected ',' or ']'"),
        (b"model: {K: 4\n", "not valid YAML"),
        (NOT_UTF8, "is not UTF-8 text"),
        (b"model:\n  K: !!python/object/apply:os.system [ls]\n", "not valid YAML"),
        (b"[" * 20000, "nested too deeply"),
    ],
    ids=["syntax", "flow", "not-utf8", "python-tag", "deep"],
)
def test_a_broken_config_is_one_line(cli, tmp_path, content, phrase):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    for command in (["config", "show", path], ["train", path, "--out", tmp_path / "run"]):
        line = the_only_line(cli(*command))
        assert phrase in line and str(path) in line


def test_a_folder_given_as_a_config_is_called_a_folder(cli, tmp_path):
    folder = tmp_path / "my.yaml"
    folder.mkdir()
    assert "is a folder" in the_only_line(cli("config", "show", folder))
    assert "is a folder" in the_only_line(cli("config", "show", tmp_path))


@pytest.mark.parametrize(
    "content", [b"model: {K: 4\n", NOT_UTF8, b"- just\n- a list\n"], ids=["syntax", "not-utf8", "list"]
)
def test_report_on_a_run_with_a_broken_config_is_one_line(cli, tmp_path, content):
    run = fake_run(tmp_path / "runs" / "seed=1", 1, 7e-4, [0.5])
    (run / "config.yaml").write_bytes(content)
    line = the_only_line(cli("report", tmp_path / "runs"))
    assert "config.yaml" in line


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("value", [np.zeros(3), np.float64(1.5)], ids=["array", "scalar"])
def test_a_checkpoint_holding_numpy_is_refused_without_torchs_unsafe_advice(cli, tmp_path, value):
    torch.save({"model": value}, tmp_path / "np.pt")
    line = the_only_line(cli("eval", "ari", "--checkpoint", tmp_path / "np.pt", "--data-dir", tmp_path))
    assert "could run arbitrary code" in line and "numpy" in line
    for advice in ("weights_only", "safe_globals", "Re-running", "trusted source"):
        assert advice not in line


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(cli, tmp_path):
    line = the_only_line(cli("eval", "ari", "--checkpoint", tmp_path, "--data-dir", tmp_path))
    assert "is a folder" in line and "does not exist" not in line


def test_yaml_written_by_emorl_reads_back(tmp_path):
    from emorl_cli.config import config_to_dict, read_yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(load_config("tetrominoes"))))
    assert read_yaml(path)["model"]["K"] == load_config("tetrominoes").model.K


# ------------------------------------------------------------------------------------------------ .h5 files


def _h5_reading_elsewhere(path, kind: str, other) -> None:
    """A Tetrominoes-shaped .h5 whose `test/imgs` lives in file `other`: a virtual dataset, an external link or
    external raw storage."""
    import h5py

    shape = (4, 35, 35, 3)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("test")
        if kind == "virtual":
            layout = h5py.VirtualLayout(shape=shape, dtype="uint8")
            layout[:] = h5py.VirtualSource(str(other), "test/imgs", shape=shape)
            group.create_virtual_dataset("imgs", layout, fillvalue=0)
        elif kind == "external link":
            group["imgs"] = h5py.ExternalLink(str(other), "test/imgs")
        else:
            group.create_dataset("imgs", shape=shape, dtype="uint8", external=[(str(other), 0, h5py.h5f.UNLIMITED)])


@pytest.mark.parametrize("kind", ["virtual", "external link", "external storage"])
def test_an_h5_reading_other_files_is_refused_in_one_line(cli, tmp_path, kind):
    from emorl_cli.data.dataset import H5Dataset
    from emorl_cli.errors import DataError

    missing = tmp_path / "gone.h5"  # never written: HDF5 would read zeros for a virtual dataset
    path = tmp_path / "tetrominoes_test.h5"
    _h5_reading_elsewhere(path, kind, missing)
    line = one_error_line(cli("data", "info", path))
    assert "reads data from other files" in line and "gone.h5" in line
    with pytest.raises(DataError, match="reads data from other files"):
        H5Dataset(path, "test")


def test_an_h5_with_a_virtual_dataset_inside_itself_is_read(tmp_path):
    import h5py

    from emorl_cli.data.dataset import H5Dataset

    path = tmp_path / "self.h5"
    data = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    with h5py.File(path, "w") as handle:
        handle["raw"] = data
        layout = h5py.VirtualLayout(shape=data.shape, dtype="uint8")
        layout[:] = h5py.VirtualSource(".", "raw", shape=data.shape)
        handle.create_group("test").create_virtual_dataset("imgs", layout)
    assert H5Dataset(path, "test", load_masks=False).layout.num_images == 4


# ------------------------------------------------------------------------------------------------ config convert

ORIGINAL = Path(__file__).parent / "data" / "original_configs" / "tetrominoes_train_EMORL.json"


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda raw: raw["dataset"].update(h5_path=42), "dataset.h5_path is int 42, expected the path"),
        (lambda raw: raw.update(Net="K=4"), "block 'Net' is str"),
        (lambda raw: raw.update(Net=[4, 64]), "block 'Net' is list"),
        (lambda raw: raw.update(dataset=[1]), "block 'dataset' is list"),
        (lambda raw: raw.update(training=7), "block 'training' is int"),
        (lambda raw: raw["Net"].update(input_size=35), "Net.input_size is int 35"),
        (lambda raw: raw["Net"].update(geco_warm_start="soon"), "wrong kind (ValueError"),
        (lambda raw: raw["training"].update(refinement_curriculum=[5]), "wrong kind (TypeError"),
        (lambda raw: raw["training"].update(model=["EfficientMORL"]), "field 'model' is list"),
    ],
    ids=[
        "path-number",
        "net-string",
        "net-list",
        "dataset-list",
        "training-number",
        "input-size",
        "warm-start",
        "curriculum",
        "model-list",
    ],  # fmt: skip
)
def test_config_convert_refuses_values_of_the_wrong_kind_in_one_line(cli, tmp_path, change, phrase):
    raw = json.loads(ORIGINAL.read_text())
    change(raw)
    path = tmp_path / "EMORL.json"
    path.write_text(json.dumps(raw))
    out = tmp_path / "out.yaml"
    line = the_only_line(cli("config", "convert", path, "--out", out))
    assert phrase in line
    assert not out.exists()  # never converted on defaults


# ------------------------------------------------------------------------------------------------ file names


def test_an_imported_picture_whose_name_is_not_utf8_is_one_line(cli, tmp_path):
    import os

    from test_data_import import write_pictures

    images, labels = write_pictures(tmp_path, count=4, masks=False)
    os.rename(images / "pic_01.png", os.fsencode(images) + b"/pic_\xff.png")
    out = tmp_path / "out.h5"
    line = one_error_line(cli("data", "import", images, "--out", out, "--size", "16"))
    assert "pic_\\xff.png" in line and "not UTF-8" in line
    assert not out.exists()


def test_a_folder_without_pictures_lists_a_non_utf8_name_with_escapes(cli, tmp_path):
    import os

    folder = tmp_path / "empty"
    folder.mkdir()
    (tmp_path / "empty" / os.fsdecode(b"notes-\xe9.txt")).write_text("x")
    line = one_error_line(cli("data", "import", folder, "--out", tmp_path / "o.h5"))
    assert "notes-\\xe9.txt" in line


# ------------------------------------------------------------------------------------------------ full disks


def test_data_synth_on_a_disk_that_fills_up_is_one_line_and_leaves_nothing(tmp_path):
    """The kernel refuses writes past a file-size limit (RLIMIT_FSIZE) as a full disk refuses them; HDF5 reports
    it inside its own message, which h5py raises as a RuntimeError while closing the file."""
    import resource
    import signal
    import subprocess
    import sys

    from helpers import subprocess_env

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "synth"
    command = [sys.executable, "-m", "emorl_cli", "--threads", "1", "data", "synth", "tetrominoes", "--out", str(out)]
    done = subprocess.run(
        command + ["--train", "400", "--test", "10"],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(COLUMNS="300"),
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot write") and "tetrominoes.h5" in lines[0] and "File too large" in lines[0]
    assert not list(out.glob("*.h5")) and not list(out.glob(".*.tmp"))
