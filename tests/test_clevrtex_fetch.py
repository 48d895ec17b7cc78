"""`emorl data fetch --clevrtex` against archives of the test fixture served on 127.0.0.1, and the tar.gz checks.

The server is the fake Zenodo's file server (`/files/{name}`, Range support, cut-off and corrupted answers).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from clevrtex_fixture import pack_archives, tar_gz, write_variant
from fake_server import FakeZenodo, md5
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.data.archives import ArchiveDamaged, scan_archive
from emorl_cli.data.clevrtex import ClevrTexDataset
from emorl_cli.data.clevrtex_fetch import clevrtex_files
from emorl_cli.data.progress import NullProgress
from emorl_cli.data.registry import CLEVRTEX_BASE_URL, MANIFEST_NAME

runner = CliRunner()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """The published archives of a fixture: full in five parts, camo in one."""
    root = tmp_path_factory.mktemp("clevrtex-src")
    write_variant(root, "full", 20, per_folder=2, seed=0)  # ten numbered folders, two per part
    write_variant(root, "camo", 10, per_folder=5, seed=1)
    return {**pack_archives(root, "full", parts=5), **pack_archives(root, "camo")}


@pytest.fixture()
def fake(archives):
    server = FakeZenodo()
    server.files = dict(archives)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def fetch(fake: FakeZenodo, dest: Path, *extra: str, retries: int = 2):
    args = ["data", "fetch", "--clevrtex", "--dest", str(dest), "--base-url", f"{fake.url}/files"]
    return runner.invoke(app, args + ["--retries", str(retries), "--backoff", "0", "--timeout", "5", *extra])


def one_line_error(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_the_file_list_follows_the_published_names():
    every = [rf.key for rf in clevrtex_files((), CLEVRTEX_BASE_URL)]
    assert every[:5] == [f"clevrtex_full_part{i}.tar.gz" for i in range(1, 6)]
    assert every[5:] == [f"clevrtex_{v}.tar.gz" for v in ("pbg", "vbg", "grassbg", "camo", "outd")]
    camo = clevrtex_files(("camo",), "https://mirror.example/clevrtex/")
    assert [(rf.url, rf.size, rf.md5) for rf in camo] == [
        ("https://mirror.example/clevrtex/clevrtex_camo.tar.gz", None, None)
    ]


def test_fetch_unpacks_the_variants_into_the_layout_the_reader_reads(fake, tmp_path):
    result = fetch(fake, tmp_path, "--variant", "full", "--variant", "camo")
    assert result.exit_code == 0, result.output
    assert "clevrtex_full_part3.tar.gz downloaded and verified" in result.output
    assert f"use the data with --data-dir {tmp_path}" in result.output.replace("\n", "")
    assert not list(tmp_path.glob("*.tar.gz")) and not list(tmp_path.rglob("*.part"))
    assert len(ClevrTexDataset(tmp_path, "full", "train")) == 16
    assert len(ClevrTexDataset(tmp_path, "camo", "test")) == 1
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    image = "clevrtex_full/7/CLEVRTEX_full_000015.png"
    assert manifest["files"][image]["md5"] == md5((tmp_path / image).read_bytes())
    assert manifest["files"][image]["source"] == "clevrtex/clevrtex_full_part3.tar.gz"  # folders 2 and 7
    part = manifest["archives"]["clevrtex_full_part1.tar.gz"]
    assert part["extracted"] is True and part["md5"] == md5(fake.files["clevrtex_full_part1.tar.gz"])
    assert len(part["members"]) == 4 * 4  # two folders of two samples, four files each
    assert runner.invoke(app, ["data", "verify", str(tmp_path)]).exit_code == 0

    fake.requests.clear()
    again = fetch(fake, tmp_path, "--variant", "full", "--variant", "camo")
    assert again.exit_code == 0, again.output
    assert fake.requests == [] and again.output.count("already verified") == 6


def test_a_cut_off_archive_resumes_with_a_range_request(fake, tmp_path):
    data = fake.files["clevrtex_camo.tar.gz"]
    fake.cut_once["clevrtex_camo.tar.gz"] = len(data) // 3
    result = fetch(fake, tmp_path, "--variant", "camo")
    assert result.exit_code == 0, result.output
    assert fake.file_gets("clevrtex_camo.tar.gz") == [None, f"bytes={len(data) // 3}-"]
    assert len(ClevrTexDataset(tmp_path, "camo", "test")) == 1


def test_an_archive_damaged_in_transit_is_fetched_again(fake, tmp_path):
    name = "clevrtex_camo.tar.gz"
    fake.corrupt_once.add(name)
    fake.corrupt_offset[name] = len(fake.files[name]) // 2  # inside the compressed data: the CRC catches it
    result = fetch(fake, tmp_path, "--variant", "camo")
    assert result.exit_code == 0, result.output
    assert "the archive is damaged" in result.output and "refetched" in result.output
    assert fake.file_gets(name) == [None, None]
    assert len(ClevrTexDataset(tmp_path, "camo", "test")) == 1


def test_an_archive_damaged_twice_is_an_error_and_nothing_is_unpacked(fake, tmp_path):
    name = "clevrtex_camo.tar.gz"
    fake.corrupt_always.add(name)
    fake.corrupt_offset[name] = len(fake.files[name]) - 6  # the gzip trailer's CRC-32
    result = fetch(fake, tmp_path, "--variant", "camo")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "checksum mismatch for clevrtex_camo.tar.gz again" in line
    assert (tmp_path / f"{name}.bad").exists() and not (tmp_path / name).exists()
    assert not (tmp_path / "clevrtex_camo").exists()


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        good = tarfile.TarInfo("clevrtex_camo/0/CLEVRTEX_camo_000000.json")
        good.size = 2
        archive.addfile(good, io.BytesIO(b"{}"))
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()


def evil(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, (5 if kind == tarfile.REGTYPE else 0)
    return info


@pytest.mark.parametrize(
    ("member", "phrase"),
    [
        (evil("../evil.txt"), "unsafe path"),
        (evil("/abs/evil.txt"), "unsafe path"),
        (evil("clevrtex_camo/../../evil.txt"), "unsafe path"),
        (evil("clevrtex_camo/link", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
        (evil("clevrtex_camo/hard", tarfile.LNKTYPE, "clevrtex_camo/0/CLEVRTEX_camo_000000.json"), "a link"),
        (evil("clevrtex_camo/fifo", tarfile.FIFOTYPE), "a special file"),
    ],
)
def test_an_unsafe_archive_is_refused_before_anything_is_written(fake, tmp_path, member, phrase):
    fake.files["clevrtex_camo.tar.gz"] = tar_with(member, b"pwned")
    dest = tmp_path / "dest"
    result = fetch(fake, dest, "--variant", "camo")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert phrase in line and "not trustworthy" in line
    assert not (dest / "clevrtex_camo").exists()
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()


def test_a_png_member_that_is_no_png_is_refused(fake, tmp_path):
    fake.files["clevrtex_camo.tar.gz"] = tar_with(evil("clevrtex_camo/0/CLEVRTEX_camo_000001.png"), b"notpn")
    result = fetch(fake, tmp_path, "--variant", "camo")
    assert result.exit_code == 1
    assert "is not a PNG image" in one_line_error(result)
    assert not (tmp_path / "clevrtex_camo/0/CLEVRTEX_camo_000001.png").exists()


def test_scan_catches_truncation_and_crc_errors(tmp_path):
    root = tmp_path / "src"
    (root / "clevrtex_x").mkdir(parents=True)
    (root / "clevrtex_x" / "a.bin").write_bytes(bytes(range(256)) * 400)
    good = tar_gz(root, [root / "clevrtex_x"])
    path = tmp_path / "a.tar.gz"
    path.write_bytes(good)
    listing = scan_archive(path, path.name, NullProgress())
    assert listing.members == (("clevrtex_x/a.bin", 102_400),)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveDamaged):
        scan_archive(path, path.name, NullProgress())
    raw = gzip.decompress(good)
    crc_flipped = bytearray(gzip.compress(raw))
    crc_flipped[-8] ^= 0x01  # the trailer's CRC-32 no longer matches the data
    path.write_bytes(bytes(crc_flipped))
    with pytest.raises(ArchiveDamaged, match="CRC"):
        scan_archive(path, path.name, NullProgress())


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--clevrtex", "--variant", "nope"], "unknown ClevrTex variant 'nope'; choose from full, pbg"),
        (["--zenodo", "--variant", "full"], "--variant full applies to --clevrtex only"),
        (["--clevrtex", "--only", "x.h5"], "--only and --record apply to --zenodo only"),
        (["--zenodo", "--clevrtex"], "give one source"),
    ],
)
def test_option_mistakes_are_one_line_errors(tmp_path, args, phrase):
    result = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path), "--base-url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 1
    assert phrase in one_line_error(result)


def test_verify_finds_a_changed_image_and_recheck_repairs_it(fake, tmp_path):
    assert fetch(fake, tmp_path, "--variant", "camo").exit_code == 0
    image = tmp_path / "clevrtex_camo" / "1" / "CLEVRTEX_camo_000007.png"
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert result.exit_code == 1 and "CLEVRTEX_camo_000007.png: md5" in " ".join(result.output.split())
    fake.requests.clear()
    assert fetch(fake, tmp_path, "--variant", "camo").exit_code == 0
    assert fake.file_gets("clevrtex_camo.tar.gz") == []  # without --recheck the manifest is trusted
    result = fetch(fake, tmp_path, "--variant", "camo", "--recheck")
    assert result.exit_code == 0, result.output
    assert fake.file_gets("clevrtex_camo.tar.gz") == [None]
    assert image.read_bytes() == original
    assert runner.invoke(app, ["data", "verify", str(tmp_path)]).exit_code == 0
