"""`emorl data info` (table + PNG contact sheet) and `emorl data verify` (manifest re-check)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.data.manifest import verify_folder
from emorl_cli.data.preview import PALETTE
from emorl_cli.data.registry import MANIFEST_NAME
from emorl_cli.data.synth import synthesize

FIXTURES = Path(__file__).parent / "data" / "fixtures"
REAL10 = FIXTURES / "tetrominoes_real10_test.h5"
runner = CliRunner()


def test_info_describes_fixture_and_writes_preview(tmp_path):
    out = tmp_path / "sheet" / "preview.png"
    result = runner.invoke(app, ["data", "info", str(REAL10), "--preview", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "test/imgs" in text and "[10, 35, 35, 3]" in text and "uint8" in text
    assert "published_model_pred_masks" in text and "float32" in text
    assert "10 images of 35x35, 4 mask entities" in text
    assert "0, 255" in text  # mask values
    sheet = np.asarray(Image.open(out).convert("RGB"))
    # 10 images in 4 columns → 3 rows; every image shown twice (plain and with masks), scaled ×3
    assert sheet.shape[0] > 3 * 105 and sheet.shape[1] > 4 * 2 * 105
    colours = {tuple(c) for c in sheet.reshape(-1, 3)[::7]}
    assert len(colours) > 20  # real content, not a blank canvas
    tinted = np.round(0.4 * np.array([0, 0, 0]) + 0.6 * PALETTE[0]).astype(np.uint8)  # background over black
    assert (np.abs(sheet.astype(int) - tinted).sum(axis=-1) <= 1).any()


def test_verify_ok_then_names_each_bad_file(tmp_path):
    synthesize("tetrominoes", tmp_path, 30, 10, seed=1)
    result = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "all 2 files" in result.output

    train = tmp_path / "tetrominoes.h5"
    data = bytearray(train.read_bytes())
    data[-100] ^= 0xFF  # same size, other content
    train.write_bytes(bytes(data))
    (tmp_path / "tetrominoes_test.h5").unlink()
    result = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "tetrominoes.h5: md5" in error[0] and "tetrominoes_test.h5: missing" in error[0]
    assert {c.name: c.status for c in verify_folder(tmp_path)} == {
        "tetrominoes.h5": "md5",
        "tetrominoes_test.h5": "missing",
    }


def test_verify_reports_size_change_and_missing_manifest(tmp_path):
    synthesize("tetrominoes", tmp_path, 5, 0)
    with open(tmp_path / "tetrominoes.h5", "ab") as handle:
        handle.write(b"x")
    checks = verify_folder(tmp_path)
    assert [c.status for c in checks] == ["size"]
    (tmp_path / MANIFEST_NAME).unlink()
    result = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert result.exit_code == 1 and "has no emorl-manifest.json" in result.output


def test_verify_refuses_manifest_names_outside_the_folder(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"files": {"../outside.h5": {"size": 1, "md5": "0" * 32}}, "archives": {}})
    )
    assert [c.status for c in verify_folder(tmp_path)] == ["unsafe name"]
