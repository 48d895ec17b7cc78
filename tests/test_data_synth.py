"""Synthetic Tetrominoes against real images (tests/data/fixtures) and synthetic Multi-dSprites properties."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from emorl_cli.cli.app import app
from emorl_cli.config import DataConfig
from emorl_cli.data import synth_dsprites, synth_tetrominoes
from emorl_cli.data.dataset import open_split
from emorl_cli.data.synth import generate, synthesize
from emorl_cli.errors import DataError

FIXTURES = Path(__file__).parent / "data" / "fixtures"
REAL = [FIXTURES / "tetrominoes_real10_test.h5", FIXTURES / "tetrominoes_iodine_mini_test.h5"]
runner = CliRunner()


def load(path: Path, split: str = "test") -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[split][k][()] for k in f[split]}


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    parts = [load(p) for p in REAL]
    return {"imgs": np.concatenate([p["imgs"] for p in parts]), "masks": np.concatenate([p["masks"] for p in parts])}


@pytest.fixture(scope="module")
def real_factors() -> dict[str, np.ndarray]:
    return load(REAL[1])


@pytest.fixture(scope="module")
def synth() -> dict[str, np.ndarray]:
    return generate("tetrominoes", 3000, seed=7)


def pieces(data: dict[str, np.ndarray]):
    """(image index, entity, top, left, pattern [h,w] bool, rgb pixels [100,3]) for every piece."""
    for n in range(len(data["imgs"])):
        for k in range(1, data["masks"].shape[1]):
            m = data["masks"][n, k, :, :, 0] > 0
            rows, cols = np.nonzero(m)
            if rows.size == 0:
                continue
            top, left = rows.min(), cols.min()
            yield n, k, top, left, m[top : rows.max() + 1, left : cols.max() + 1], data["imgs"][n][m]


def block_patterns(data: dict[str, np.ndarray]) -> set[bytes]:
    """Every lit-channel 5×5 block of every piece, as bytes."""
    out = set()
    for n, _, top, left, pattern, _ in pieces(data):
        img = data["imgs"][n]
        for r in range(0, pattern.shape[0], 5):
            for c in range(0, pattern.shape[1], 5):
                if pattern[r, c]:
                    block = img[top + r : top + r + 5, left + c : left + c + 5]
                    for ch in range(3):
                        if block[..., ch].any():
                            out.add(block[..., ch].tobytes())
    return out


def test_same_bevel_and_pixel_values_as_real(real, synth):
    bevel = np.array([[191, 255, 255, 255, 223]] + [[127, 159, 159, 159, 191]] * 3 + [[95, 63, 63, 63, 127]], np.uint8)
    assert block_patterns(real) == {bevel.tobytes()}
    assert block_patterns(synth) == {bevel.tobytes()}
    lit_values = {0, 63, 95, 127, 159, 191, 223, 255}
    for data in (real, synth):
        assert set(np.unique(data["imgs"]).tolist()) == lit_values
        for *_, rgb in pieces(data):  # each channel is either dark or carries all 7 bevel values
            for ch in range(3):
                assert set(np.unique(rgb[:, ch]).tolist()) in ({0}, lit_values - {0})


def test_three_pieces_of_100_px_no_overlap_inside_black_background(real, synth):
    for data in (real, synth):
        masks = data["masks"][..., 0]
        assert data["masks"].shape[1:] == (4, 35, 35, 1) and data["masks"].dtype == np.uint8
        assert set(np.unique(masks).tolist()) == {0, 255}
        counts = (masks > 0).sum(axis=(2, 3))
        assert (counts == [925, 100, 100, 100]).all()
        assert ((masks > 0).sum(axis=1) == 1).all()  # every pixel belongs to exactly one entity
        assert (data["imgs"][masks[:, 0] > 0] == 0).all()  # black background
        assert (data["imgs"][masks[:, 0] == 0].max(axis=-1) > 0).all()  # pieces are lit everywhere


def test_nineteen_orientations_and_shape_ids_match_real_convention(real_factors, synth):
    def id_to_pattern(data):
        table: dict[int, set[bytes]] = {}
        for n, k, _, _, pattern, _ in pieces(data):
            blocks = pattern[::5, ::5]
            table.setdefault(int(data["factors"][n, k, 2]), set()).add(blocks.tobytes() + bytes(blocks.shape))
        return table

    synth_table = id_to_pattern(synth)
    real_table = id_to_pattern(real_factors)
    assert sorted(synth_table) == list(range(1, 20))
    assert all(len(v) == 1 for v in synth_table.values())  # one orientation per id
    assert len(set.union(*synth_table.values())) == 19
    for sid, patterns in real_table.items():  # every id seen in real data means the same orientation
        assert synth_table[sid] == patterns, sid
    shape_counts = np.bincount(synth["factors"][:, 1:, 2].astype(int).ravel(), minlength=20)[1:]
    assert shape_counts.min() > 0.7 * shape_counts.mean()  # uniform, no shape favoured by the placement


def test_six_pure_colours_like_real(real_factors, synth):
    def colours(data):
        return {tuple(c) for c in data["factors"][:, 1:, 3:6].reshape(-1, 3).astype(int).tolist()}

    expected = {(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)}
    assert colours(real_factors) == expected
    assert colours(synth) == expected
    for n, k, _, _, _, rgb in pieces(synth):  # the image agrees with the colour factor
        assert ((rgb.max(axis=0) > 0).astype(int) == synth["factors"][n, k, 3:6]).all()


def test_factor_conventions_match_real(real_factors, synth):
    for data in (real_factors, synth):
        f = data["factors"]
        assert f.shape[1:] == (4, 7) and f.dtype == np.float32
        assert (f[:, 0] == [0, 0, 0, 0, 0, 0, 1]).all()
        assert (f[:, 1:, 6] == 1).all()
        for n, k, top, left, pattern, _ in pieces(data):
            assert f[n, k, 0] == top and f[n, k, 1] == left  # x = top row, y = left column
            assert top + pattern.shape[0] <= 35 and left + pattern.shape[1] <= 35


def test_pieces_may_touch_and_entity_order_is_random(real, synth):
    def touching(data):
        total = 0
        for n in range(len(data["imgs"])):
            m = data["masks"][n, :, :, :, 0] > 0
            for k in range(1, 4):
                grown = ndimage.binary_dilation(m[k])
                total += sum(bool((grown & m[j]).any()) for j in range(k + 1, 4))
        return total

    assert touching(real) > 0  # the real data has touching pieces (3 pairs in 20 images)
    rate = touching(synth) / len(synth["imgs"])
    assert 0.03 < rate < 0.5
    x = synth["factors"][:, 1:, 0]
    sorted_frac = np.mean((x[:, 0] <= x[:, 1]) & (x[:, 1] <= x[:, 2]))
    assert 0.1 < sorted_frac < 0.3  # ~1/6 plus ties: order unrelated to position


def test_deterministic_by_seed_and_fast():
    a = synth_tetrominoes.generate(200, np.random.default_rng(3))
    b = synth_tetrominoes.generate(200, np.random.default_rng(3))
    c = synth_tetrominoes.generate(200, np.random.default_rng(4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["imgs"], c["imgs"])
    start = time.perf_counter()
    generate("tetrominoes", 10_000, seed=0)
    assert time.perf_counter() - start < 15


def test_multi_dsprites_properties():
    d = generate("multi_dsprites", 400, seed=1)
    imgs, masks, factors = d["imgs"], d["masks"][..., 0], d["factors"]
    assert imgs.shape == (400, 64, 64, 3) and imgs.dtype == np.uint8
    assert masks.shape == (400, 6, 64, 64) and set(np.unique(masks).tolist()) == {0, 255}
    assert factors.shape == (400, 6, 9) and factors.dtype == np.float32
    assert ((masks > 0).sum(axis=1) == 1).all()  # the masks partition the image
    nonempty = (masks > 0).any(axis=(2, 3))
    counts = nonempty.sum(axis=1)
    assert counts.min() == 3 and counts.max() == 6 and len(np.unique(counts)) == 4
    assert (nonempty[:, 0]).all()
    # empty entities come last; visibility marks exactly the non-empty ones
    assert (np.sort(nonempty[:, 1:], axis=1)[:, ::-1] == nonempty[:, 1:]).all()
    assert (factors[..., 8] == nonempty).all()
    for n in range(0, 400, 37):
        bg = imgs[n][masks[n, 0] > 0]
        assert (bg == bg[0]).all() and bg[0, 0] == bg[0, 1] == bg[0, 2]  # one grey
        assert np.isclose(factors[n, 0, 5], bg[0, 0] / 255)
        for k in np.flatnonzero(nonempty[n, 1:]) + 1:
            px = imgs[n][masks[n, k] > 0]
            assert (px == np.round(factors[n, k, 5:8] * 255)).all()
            assert factors[n, k, 2] in (1, 2, 3) and 0.5 <= factors[n, k, 3] <= 1
            hsv_value = factors[n, k, 5:8].max()
            assert hsv_value >= 0.5 - 1e-6
    assert set(np.unique(factors[:, 1:, 2][nonempty[:, 1:]]).tolist()) == {1.0, 2.0, 3.0}
    again = synth_dsprites.generate(50, np.random.default_rng(5))
    assert np.array_equal(again["imgs"], synth_dsprites.generate(50, np.random.default_rng(5))["imgs"])


@pytest.mark.parametrize(
    ("name", "train_file", "test_file", "size"),
    [
        ("tetrominoes", "tetrominoes.h5", "tetrominoes_test.h5", 35),
        ("multi_dsprites", "multi_dsprites_colored_on_grayscale.h5", "multi_dsprites_colored_on_grayscale_test.h5", 64),
    ],
)
def test_cli_synth_writes_zenodo_named_files_usable_by_configs(tmp_path, name, train_file, test_file, size):
    result = runner.invoke(app, ["data", "synth", name, "--out", str(tmp_path), "--train", "40", "--test", "12"])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / train_file, "r") as f:
        assert list(f) == ["train"] and f["train/imgs"].shape == (40, size, size, 3)
    with h5py.File(tmp_path / test_file, "r") as f:
        assert list(f) == ["test"] and f["test/masks"].shape[0] == 12
    cfg = DataConfig(dataset=name, train_file=train_file, test_file=test_file, image_size=size, load_factors=True)
    train = open_split(cfg, "train", data_dir=tmp_path)
    assert len(train) == 40 and train[0]["imgs"].shape == (3, size, size)
    # the same seed gives the same bytes; files written match generate()
    digest = hashlib.md5((tmp_path / train_file).read_bytes()).hexdigest()
    other = tmp_path / "again"
    assert (
        runner.invoke(app, ["data", "synth", name, "--out", str(other), "--train", "40", "--test", "12"]).exit_code == 0
    )
    assert hashlib.md5((other / train_file).read_bytes()).hexdigest() == digest
    with h5py.File(tmp_path / train_file, "r") as f:
        assert np.array_equal(f["train/imgs"][()], generate(name, 40, seed=0, split="train")["imgs"])


def test_synth_writes_its_default_test_count_when_test_is_left_out(tmp_path):
    from emorl_cli.cli.data_cmd import DEFAULT_SYNTH_TEST

    result = runner.invoke(app, ["data", "synth", "tetrominoes", "--out", str(tmp_path), "--train", "0"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "tetrominoes.h5").exists()
    with h5py.File(tmp_path / "tetrominoes_test.h5", "r") as f:
        assert f["test/imgs"].shape[0] == DEFAULT_SYNTH_TEST == 1_000


def test_synth_refuses_to_overwrite_without_force(tmp_path):
    (tmp_path / "tetrominoes.h5").write_bytes(b"real data")
    result = runner.invoke(app, ["data", "synth", "tetrominoes", "--out", str(tmp_path), "--train", "5", "--test", "0"])
    assert result.exit_code == 1 and "--force" in result.output
    assert (tmp_path / "tetrominoes.h5").read_bytes() == b"real data"
    with pytest.raises(DataError, match="not both 0"):
        synthesize("tetrominoes", tmp_path, 0, 0)
    synthesize("tetrominoes", tmp_path, 5, 0, force=True)
    assert h5py.is_hdf5(tmp_path / "tetrominoes.h5")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
