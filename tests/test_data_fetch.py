"""`emorl data fetch --zenodo` against a fake Zenodo served on 127.0.0.1 (Range support, faults on demand)."""

from __future__ import annotations

import errno
import io
import json
import socket
import urllib.error
import zipfile
from pathlib import Path

import pytest
from fake_server import RECORD, FakeZenodo, md5
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.data import download, zenodo
from emorl_cli.data.manifest import Manifest
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.errors import DownloadError

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "tetrominoes_iodine_mini_test.h5"
runner = CliRunner()


def payload(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 251 for i in range(n))


def fetch(fake: FakeZenodo, dest: Path, *extra: str, retries: int = 2):
    args = ["data", "fetch", "--zenodo", "--dest", str(dest), "--base-url", fake.url]
    args += ["--retries", str(retries), "--backoff", "0", "--timeout", "5", *extra]
    return runner.invoke(app, args)


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cut_off_download_resumes_with_range_and_ends_verified(fake, tmp_path):
    data = payload(300_000, 1)
    fake.files = {"tetrominoes.h5": data, "small.txt": b"hello"}
    fake.cut_once["tetrominoes.h5"] = 100_000
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert fake.file_gets("tetrominoes.h5") == [None, "bytes=100000-"]
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data
    assert not (tmp_path / "tetrominoes.h5.part").exists()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"]["tetrominoes.h5"] == {"size": len(data), "md5": md5(data), "source": f"zenodo:{RECORD}"}
    assert manifest["files"]["small.txt"]["md5"] == md5(b"hello")


def test_interrupted_run_leaves_no_final_file_and_next_run_resumes(fake, tmp_path):
    data = payload(200_000, 2)
    fake.files = {"tetrominoes.h5": data}
    fake.cut_once["tetrominoes.h5"] = 50_000
    result = fetch(fake, tmp_path, retries=0)
    assert result.exit_code == 1
    assert "connection closed" in one_line_error(result)
    assert not (tmp_path / "tetrominoes.h5").exists()
    assert (tmp_path / "tetrominoes.h5.part").stat().st_size == 50_000

    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert fake.file_gets("tetrominoes.h5")[-1] == "bytes=50000-"
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data


def test_corrupted_payload_is_caught_and_fetched_again(fake, tmp_path):
    data = payload(80_000, 3)
    fake.files = {"tetrominoes.h5": data}
    fake.corrupt_once.add("tetrominoes.h5")
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert "checksum mismatch" in result.output and "refetched" in result.output
    assert fake.file_gets("tetrominoes.h5") == [None, None]  # the second download starts from scratch
    assert (tmp_path / "tetrominoes.h5").read_bytes() == data
    assert not (tmp_path / "tetrominoes.h5.bad").exists()


def test_payload_corrupt_twice_is_an_error_and_never_replaces_a_verified_file(fake, tmp_path):
    old = payload(10_000, 4)
    (tmp_path / "tetrominoes.h5").write_bytes(old)
    manifest = Manifest.load(tmp_path)
    manifest.record_file("tetrominoes.h5", len(old), md5(old), "earlier")
    manifest.save()
    fake.files = {"tetrominoes.h5": payload(12_000, 5)}  # the record now holds another version
    fake.corrupt_always.add("tetrominoes.h5")
    result = fetch(fake, tmp_path)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "checksum mismatch" in line and "tetrominoes.h5" in line
    assert (tmp_path / "tetrominoes.h5").read_bytes() == old
    assert (tmp_path / "tetrominoes.h5.bad").exists()


def test_second_run_downloads_nothing(fake, tmp_path):
    fake.files = {"a.h5": payload(30_000, 6), "b.h5": payload(20_000, 7)}
    assert fetch(fake, tmp_path).exit_code == 0
    fake.requests.clear()
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert [p for p, _ in fake.requests if p.startswith("/files/")] == []
    assert result.output.count("already verified") == 2


def test_existing_matching_file_is_adopted_without_download(fake, tmp_path):
    data = payload(5_000, 8)
    fake.files = {"a.h5": data}
    (tmp_path / "a.h5").write_bytes(data)
    assert fetch(fake, tmp_path).exit_code == 0
    assert fake.file_gets("a.h5") == []
    assert Manifest.load(tmp_path).files["a.h5"]["md5"] == md5(data)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_record_is_extracted_verified_and_removed(fake, tmp_path):
    h5 = FIXTURE.read_bytes()
    fake.files = {"emorl_datasets.zip": _zip({"tetrominoes_test.h5": h5, "docs/readme.txt": b"readme"})}
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tetrominoes_test.h5").read_bytes() == h5
    assert (tmp_path / "docs" / "readme.txt").read_bytes() == b"readme"
    assert not (tmp_path / "emorl_datasets.zip").exists()
    assert not list(tmp_path.rglob("*.part"))
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"]["tetrominoes_test.h5"]["md5"] == md5(h5)
    assert manifest["archives"]["emorl_datasets.zip"]["extracted"] is True
    assert runner.invoke(app, ["data", "verify", str(tmp_path)]).exit_code == 0

    fake.requests.clear()
    result = fetch(fake, tmp_path)
    assert result.exit_code == 0, result.output
    assert fake.file_gets("emorl_datasets.zip") == []


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_with_unsafe_path_is_refused_before_writing_anything(fake, tmp_path, bad_name):
    dest = tmp_path / "dest"
    fake.files = {"d.zip": _zip({"good.h5": FIXTURE.read_bytes(), bad_name: b"pwned"})}
    result = fetch(fake, dest)
    assert result.exit_code == 1
    assert "unsafe path" in one_line_error(result)
    assert not (dest / "good.h5").exists()
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()


def test_only_selects_files_and_unknown_name_lists_the_record(fake, tmp_path):
    fake.files = {"a.h5": b"aaa", "b.h5": b"bbbb"}
    result = fetch(fake, tmp_path, "--only", "b.h5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.h5").exists() and not (tmp_path / "a.h5").exists()

    result = fetch(fake, tmp_path, "--only", "nope.h5")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "'nope.h5'" in line and "a.h5, b.h5" in line


def test_http_404_is_one_line_exit_1(fake, tmp_path):
    fake.status[f"/api/records/{RECORD}"] = 404
    result = fetch(fake, tmp_path)
    assert result.exit_code == 1
    assert "HTTP 404" in one_line_error(result)
    assert len(fake.requests) == 1  # a 404 is final: no retries


def test_http_500_is_retried_then_reported(fake, tmp_path):
    fake.files = {"a.h5": payload(1000, 9)}
    fake.status_once["/files/a.h5"] = 503
    assert fetch(fake, tmp_path).exit_code == 0
    assert len(fake.file_gets("a.h5")) == 2

    fake.status["/files/b.h5"] = 500
    fake.files["b.h5"] = b"x"
    result = fetch(fake, tmp_path, retries=1)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "HTTP 500" in line and "2 tries" in line
    assert not (tmp_path / "b.h5").exists()


def test_unreachable_host_is_one_line_exit_1(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(
        app,
        ["data", "fetch", "--zenodo", "--dest", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}",
         "--retries", "1", "--backoff", "0", "--timeout", "2"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "connection refused" in one_line_error(result)


def test_dns_failure_message(monkeypatch, tmp_path):
    def no_dns(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(zenodo.urllib.request, "urlopen", no_dns)
    with pytest.raises(DownloadError, match="cannot resolve host zenodo.org"):
        zenodo.fetch_zenodo(tmp_path, zenodo.FetchOptions(retries=0), sleep=lambda s: None)


def test_disk_full_keeps_the_part_and_says_so(fake, tmp_path, monkeypatch):
    fake.files = {"a.h5": payload(3 * 1024 * 1024, 10)}
    real_open = download.open_for_writing

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle
            self.written = 0

        def write(self, data):
            if self.written + len(data) > 1024 * 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fake_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "a" in mode or "w" in mode else handle

    monkeypatch.setattr(download, "open_for_writing", fake_open)
    result = fetch(fake, tmp_path)
    assert result.exit_code == 1
    assert "disk full" in one_line_error(result)
    assert not (tmp_path / "a.h5").exists()
    kept = (tmp_path / "a.h5.part").read_bytes()  # what fitted before the disk was full, ready to resume
    assert 0 < len(kept) <= 1024 * 1024 and kept == fake.files["a.h5"][: len(kept)]


def test_not_enough_free_space_is_reported_before_downloading(fake, tmp_path, monkeypatch):
    fake.files = {"a.h5": payload(10_000, 11)}
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    result = fetch(fake, tmp_path)
    assert result.exit_code == 1
    assert "not enough disk space" in one_line_error(result)
    assert fake.file_gets("a.h5") == []


def test_download_link_variants():
    opts = zenodo.FetchOptions(record="42", base_url="https://zenodo.org")
    rec = "https://zenodo.org/api/records/42"
    content = {"links": {"content": "https://zenodo.org/api/records/42/files/a.h5/content", "self": "x"}}
    assert zenodo._file_url(content, "a.h5", opts, rec).endswith("/files/a.h5/content")
    assert zenodo._file_url({"links": {"download": "/dl/a.h5"}}, "a.h5", opts, rec) == "https://zenodo.org/dl/a.h5"
    by_id = {"links": {"self": "https://zenodo.org/api/records/42/files/3f2a-uuid"}}
    assert zenodo._file_url(by_id, "a.h5", opts, rec) == "https://zenodo.org/api/records/42/files/a.h5/content"
    legacy = {"links": {"self": "https://zenodo.org/api/files/bucket-id/a.h5"}}
    assert zenodo._file_url(legacy, "a.h5", opts, rec) == "https://zenodo.org/api/files/bucket-id/a.h5"
    assert zenodo._file_url({}, "a b.h5", opts, rec) == "https://zenodo.org/api/records/42/files/a%20b.h5/content"
    parsed = zenodo._parse_files(
        {"files": {"entries": [{"filename": "x.h5", "filesize": 3, "checksum": "ABC"}]}}, opts, rec
    )
    assert parsed[0].key == "x.h5" and parsed[0].size == 3 and parsed[0].md5 == "abc"


def test_fetch_needs_a_source(tmp_path):
    result = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path)])
    assert result.exit_code == 1 and "--zenodo" in result.output
