"""`emorl models list|fetch` against a file server on 127.0.0.1 (the Zenodo fake of test_data_fetch).

The expected git blob id of the served file is computed here with hashlib (and `git hash-object` checks
emorl's own implementation); the registry entry is replaced for the test, the shipped entries keep the real ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_data_fetch import FakeZenodo, one_line_error, payload
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.data.manifest import git_blob_id
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.published import DEFAULT_BASE_URL, PUBLISHED_MODELS

runner = CliRunner()
TETRO = PUBLISHED_MODELS["tetrominoes"]


def blob_id(data: bytes) -> str:
    """Git's object id written out independently: SHA-1 over the header `blob <size>` NUL, then the bytes."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\x00" + data).hexdigest()


@pytest.fixture()
def server():
    fake = FakeZenodo()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture()
def served(server, monkeypatch):
    """The server holding a stand-in tetrominoes checkpoint; the registry expects its blob id."""
    data = payload(150_000, 11)
    server.files = {TETRO.path: data}
    monkeypatch.setitem(PUBLISHED_MODELS, "tetrominoes", dataclasses.replace(TETRO, git_blob=blob_id(data)))
    return server, data


def fetch(server: FakeZenodo, dest: Path, *extra: str, retries: int = 2):
    base = f"{server.url}/files"  # the fake serves /files/<path>: here /files/examples/<name>.pth
    args = ["models", "fetch", "tetrominoes", "--dest", str(dest), "--base-url", base]
    return runner.invoke(app, [*args, "--retries", str(retries), "--backoff", "0", "--timeout", "5", *extra])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for `git hash-object`")
@pytest.mark.parametrize("data", [b"", b"hello\n", payload(70_000, 3)], ids=["empty", "one-line", "70kB"])
def test_git_blob_id_equals_git_hash_object(tmp_path, data):
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert git_blob_id(path) == expected.stdout.strip() == blob_id(data)


def test_shipped_entries_keep_the_published_ids_and_figures():
    assert PUBLISHED_MODELS["tetrominoes"].git_blob == "7a156b042061dfbdf9be6292ef52eb4f1f978749"
    assert PUBLISHED_MODELS["clevr6"].git_blob == "77e554efe795f5aaca437582f48325382cfeb8c3"
    assert (TETRO.ari, TETRO.mse, TETRO.kl, TETRO.config) == (99.7, 2.76e-4, 70.7, "tetrominoes")
    clevr = PUBLISHED_MODELS["clevr6"]
    assert (clevr.ari, clevr.mse, clevr.kl, clevr.config) == (98.05, 3.64e-4, 187.1, "clevr6")
    assert TETRO.url(DEFAULT_BASE_URL).startswith("https://raw.githubusercontent.com/pemami4911/EfficientMORL/")
    assert TETRO.url(DEFAULT_BASE_URL).endswith("/examples/emorl-tetrominoes-seed-1200-state-200000.pth")


def test_fetch_verifies_the_blob_id_records_the_manifest_and_prints_the_eval_command(served, tmp_path):
    server, data = served
    result = fetch(server, tmp_path / "models")
    assert result.exit_code == 0, result.output
    final = tmp_path / "models" / TETRO.file_name
    assert final.read_bytes() == data
    assert "git blob id verified" in result.output
    assert "ARI 99.7" in result.output and "--config tetrominoes" in result.output
    manifest = json.loads((tmp_path / "models" / MANIFEST_NAME).read_text())
    assert manifest["files"][TETRO.file_name]["md5"] == hashlib.md5(data).hexdigest()
    assert runner.invoke(app, ["data", "verify", str(tmp_path / "models")]).exit_code == 0

    server.requests.clear()
    again = fetch(server, tmp_path / "models")
    assert again.exit_code == 0 and "already verified" in again.output
    assert server.requests == []


def test_corrupted_copy_is_refused_and_never_kept_under_its_name(served, tmp_path):
    server, _ = served
    server.corrupt_always.add(TETRO.path)
    result = fetch(server, tmp_path)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "git blob id" in line and "expected" in line
    assert not (tmp_path / TETRO.file_name).exists()
    assert (tmp_path / (TETRO.file_name + ".bad")).exists()
    assert not (tmp_path / MANIFEST_NAME).exists()  # nothing vouches for the bad copy


def test_corrupted_once_is_fetched_again(served, tmp_path):
    server, data = served
    server.corrupt_once.add(TETRO.path)
    result = fetch(server, tmp_path)
    assert result.exit_code == 0, result.output
    assert "refetched" in result.output
    assert (tmp_path / TETRO.file_name).read_bytes() == data
    assert not (tmp_path / (TETRO.file_name + ".bad")).exists()


def test_the_shipped_id_refuses_a_file_that_is_not_the_published_one(server, tmp_path):
    server.files = {TETRO.path: payload(2_000, 12)}  # registry left as shipped: the real blob id
    result = fetch(server, tmp_path)
    assert result.exit_code == 1
    assert TETRO.git_blob in one_line_error(result)
    assert not (tmp_path / TETRO.file_name).exists()


def test_cut_off_download_resumes_with_range(served, tmp_path):
    server, data = served
    server.cut_once[TETRO.path] = 60_000
    result = fetch(server, tmp_path)
    assert result.exit_code == 0, result.output
    assert server.file_gets(TETRO.path) == [None, "bytes=60000-"]
    assert (tmp_path / TETRO.file_name).read_bytes() == data


def test_a_different_file_under_the_name_is_replaced_by_the_verified_one(served, tmp_path):
    server, data = served
    (tmp_path / TETRO.file_name).write_bytes(b"something else")
    result = fetch(server, tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / TETRO.file_name).read_bytes() == data


def test_missing_file_and_unknown_name_are_one_line_errors(server, tmp_path):
    result = fetch(server, tmp_path)  # nothing served
    assert result.exit_code == 1 and "HTTP 404" in one_line_error(result)
    unknown = runner.invoke(app, ["models", "fetch", "mnist", "--dest", str(tmp_path)])
    assert unknown.exit_code == 1 and "tetrominoes, clevr6" in one_line_error(unknown)


def test_list_names_configs_figures_and_the_eval_commands(tmp_path):
    (tmp_path / TETRO.file_name).write_bytes(b"x")
    result = runner.invoke(app, ["models", "list", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for model in PUBLISHED_MODELS.values():
        assert f"--checkpoint {tmp_path / model.file_name} --config {model.config}" in result.output
        assert f"emorl models fetch {model.name}" in result.output
    for figure in ("99.7", "0.000276", "70.7", "98.05", "0.000364", "187.1"):
        assert figure in result.output
    assert "tetrominoes_test.h5" in result.output and "clevr6_with_masks_and_factors_test.h5" in result.output


def test_a_destination_held_by_another_fetch_is_refused_without_a_request(served, tmp_path):
    from emorl_cli.locks import lock_folder

    server, data = served
    dest = tmp_path / "models"
    with lock_folder(dest, "emorl models fetch", advice="wait"):  # a second open file: refused like a process
        result = fetch(server, dest)
    assert result.exit_code == 1
    assert "is in use by another emorl process" in one_line_error(result)
    assert server.requests == [] and not (dest / TETRO.file_name).exists()
    assert fetch(server, dest).exit_code == 0 and (dest / TETRO.file_name).read_bytes() == data
    assert not (dest / ".emorl-lock").exists()
