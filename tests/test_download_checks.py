"""Downloads are what they say: checked against the checksum the source publishes (md5 or sha256), said
plainly when only the size could be checked, and never retried for ever whatever the server answers.

The fake server (`tests/fake_server.py`, 127.0.0.1 only) plays the servers a fetch meets in the wild: one that
ignores `Range` and sends the whole file, one that answers a resume with the wrong `Content-Range`, one that
gzips the body although emorl asked for the bytes as they are, one that trickles a byte at a time. The
commands run as subprocesses with a time limit, so a fetch that loops for ever fails the test instead of
hanging it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest
from helpers import subprocess_env
from test_data_fetch import fetch, one_line_error, payload
from test_models_fetch import TETRO, blob_id
from test_models_fetch import fetch as models_fetch

SIZE = 64 * 1024


def fetch_in_subprocess(fake, dest, *extra, retries=2, timeout=5, limit=60):
    """`emorl data fetch --zenodo` in its own process, killed (and the test failed) after `limit` seconds."""
    command = [sys.executable, "-m", "emorl_cli", "data", "fetch", "--zenodo", "--dest", str(dest)]
    command += ["--base-url", fake.url, "--retries", str(retries), "--backoff", "0", "--timeout", str(timeout)]
    started = time.monotonic()
    done = subprocess.run(
        command + list(extra), capture_output=True, text=True, timeout=limit, env=subprocess_env(COLUMNS="200")
    )
    return done, time.monotonic() - started


def error_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------ checksums


def test_the_record_checksum_field_is_read_as_md5_or_sha256():
    from emorl_cli.data.zenodo import _checksums

    md5, sha = "0" * 32, "a" * 64
    assert _checksums(f"md5:{md5}") == (md5, None)
    assert _checksums(f"SHA256:{sha.upper()}") == (None, sha)
    assert _checksums(sha) == (None, sha) and _checksums(md5) == (md5, None)
    assert _checksums("sha512:abcd") == (None, None)
    assert _checksums(None) == (None, None) and _checksums("") == (None, None)


def test_a_sha256_record_is_verified_by_sha256(fake, tmp_path):
    data = payload(SIZE, 1)
    fake.files["tetrominoes.h5"] = data
    fake.checksum_fields["tetrominoes.h5"] = "sha256:" + hashlib.sha256(data).hexdigest()
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert "tetrominoes.h5 downloaded and verified (sha256)" in result.output
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data


def test_a_wrong_sha256_is_a_mismatch_and_the_file_never_gets_its_name(fake, tmp_path):
    fake.files["tetrominoes.h5"] = payload(SIZE, 2)
    fake.checksum_fields["tetrominoes.h5"] = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    line = one_line_error(fetch(fake, tmp_path))
    assert "checksum mismatch" in line and "sha256" in line
    assert not (tmp_path / "tetrominoes.h5").exists()
    assert len(fake.file_gets("tetrominoes.h5")) == 2  # fetched once more after the first mismatch, no more


@pytest.mark.parametrize("checksum", [None, "sha512:" + "ab" * 64])
def test_a_file_checked_only_by_its_size_says_so_and_never_verified(fake, tmp_path, checksum):
    fake.files["tetrominoes.h5"] = payload(SIZE, 3)
    fake.checksum_fields["tetrominoes.h5"] = checksum
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert "only its size could be checked" in result.output
    assert "verified" not in result.output.split("manifest:")[0]


def test_an_md5_record_still_says_verified_by_md5(fake, tmp_path):
    fake.files["tetrominoes.h5"] = payload(SIZE, 4)
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0 and "downloaded and verified (md5)" in result.output, result.output


# ------------------------------------------------------------------------------------------------ bounded retries


def test_a_server_that_ignores_range_restarts_the_file_once_from_zero(fake, tmp_path):
    data = payload(SIZE, 5)
    fake.files["tetrominoes.h5"] = data
    fake.cut_once["tetrominoes.h5"] = SIZE // 3
    fake.ignore_range.add("tetrominoes.h5")
    done, _ = fetch_in_subprocess(fake, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data
    assert fake.file_gets("tetrominoes.h5") == [None, f"bytes={SIZE // 3}-"]


@pytest.mark.parametrize("fault", ["ignore_range", "wrong_range", "gzip_body"])
def test_retries_are_bounded_whatever_the_server_answers(fake, tmp_path, fault):
    fake.files["tetrominoes.h5"] = payload(SIZE, 6)
    if fault == "gzip_body":
        fake.gzip_body.add("tetrominoes.h5")
    else:
        getattr(fake, fault).add("tetrominoes.h5")
        fake.cut_always["tetrominoes.h5"] = SIZE // 2  # every answer ends early, as a flaky link would
    done, seconds = fetch_in_subprocess(fake, tmp_path, retries=2)
    assert done.returncode == 1 and len(error_lines(done)) == 1, done.stderr
    assert "gave up after 3 tries" in error_lines(done)[0]
    gets = fake.file_gets("tetrominoes.h5")
    assert len(gets) == 3, gets  # the first try and --retries 2 more, however the server answers
    assert sum(rng is not None for rng in gets) <= 1  # a refused resume is never asked for again
    assert seconds < 30
    assert not (tmp_path / "tetrominoes.h5").exists()


def test_a_trickling_transfer_is_a_stall_after_timeout_seconds(fake, tmp_path):
    fake.files["tetrominoes.h5"] = payload(SIZE, 7)
    fake.trickle["tetrominoes.h5"] = 0.05  # 20 bytes a second: a transfer in name only
    done, seconds = fetch_in_subprocess(fake, tmp_path, retries=0, timeout=1, limit=30)
    assert done.returncode == 1 and len(error_lines(done)) == 1, done.stderr
    assert "stalled" in error_lines(done)[0] and "--timeout 1" in error_lines(done)[0]
    assert seconds < 15
    assert not (tmp_path / "tetrominoes.h5").exists()


@pytest.mark.parametrize("where", ["record", "file"])
def test_a_redirect_loop_is_one_line(fake, tmp_path, where):
    from fake_server import RECORD

    fake.files["tetrominoes.h5"] = payload(SIZE, 8)
    fake.redirect_loop.add(f"/api/records/{RECORD}" if where == "record" else "/files/tetrominoes.h5")
    line = one_line_error(fetch(fake, tmp_path))
    assert "redirects in a loop" in line


def test_models_fetch_on_a_trickling_server_stalls_after_timeout_seconds(fake, tmp_path, monkeypatch):
    import dataclasses

    from emorl_cli.published import PUBLISHED_MODELS

    data = payload(SIZE, 9)
    fake.files = {TETRO.path: data}
    monkeypatch.setitem(PUBLISHED_MODELS, "tetrominoes", dataclasses.replace(TETRO, git_blob=blob_id(data)))
    fake.trickle[TETRO.path] = 0.05
    started = time.monotonic()
    result = models_fetch(fake, tmp_path, "--timeout", "1", retries=1)
    line = one_line_error(result)
    assert "stalled" in line and "gave up after 2 tries" in line
    assert time.monotonic() - started < 15
    assert not (tmp_path / TETRO.file_name).exists()
