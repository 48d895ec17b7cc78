"""Pictures: stage figures, the index page, traversal GIFs and the GIF sheet."""

from __future__ import annotations

import html
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from emorl_cli.errors import EmorlError
from emorl_cli.viz.figures import (
    component_images,
    render_stage_figure,
    save_png,
    stage_figure_layout,
    to_uint8_image,
)
from emorl_cli.viz.gifs import traversal_gif_name, write_gif_sheet, write_traversal_gif
from emorl_cli.viz.html import write_index_html

FIXTURES = Path(__file__).parent / "data" / "fixtures"


def _stages(rng, k, h, w, n, attention=True):
    stages = []
    for i in range(n):
        masks = rng.random((k, h, w)).astype(np.float32)
        masks /= masks.sum(0, keepdims=True)
        stages.append(
            {
                "name": f"layer {i}",
                "reconstruction": rng.random((3, h, w)),
                "masks": masks,
                "means": rng.random((k, 3, h, w)),
                "attention": rng.random((k, h, w)) if attention and i == 0 else None,
            }
        )
    return stages


def test_component_formula_on_a_hand_case():
    masks = np.array([[[1.0, 0.0], [0.5, 0.25]]])  # [K=1,2,2]
    means = np.zeros((1, 3, 2, 2))
    means[0, 0] = 1.0  # red
    comp = component_images(masks, means)[0]  # [3,2,2]
    assert comp[:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # fully the slot's colour
    assert comp[:, 0, 1].tolist() == [1.0, 1.0, 1.0]  # white where the mask is 0
    assert comp[:, 1, 0].tolist() == [1.0, 0.5, 0.5]  # half-way to white
    assert comp[:, 1, 1].tolist() == [1.0, 0.75, 0.75]
    torch_comp = component_images(torch.tensor(masks)[:, None], torch.tensor(means))  # [K,1,H,W] masks too
    np.testing.assert_allclose(torch_comp[0], comp)


@pytest.mark.parametrize("k", [2, 4])
def test_stage_figure_grid_size_follows_slots_and_stages(k):
    rng = np.random.default_rng(k)
    h = w = 35
    fig = render_stage_figure(rng.random((3, h, w)), _stages(rng, k, h, w, n=3))
    layout = stage_figure_layout(h, w, k, 3, attention=True)
    assert layout.cols == 2 + 3 * k and layout.rows == 3
    assert layout.cell_h == 105  # 35 px upscaled ×3 to be readable
    assert fig.size == layout.size
    one_more_slot = stage_figure_layout(h, w, k + 1, 3, attention=True).size
    one_more_stage = stage_figure_layout(h, w, k, 4, attention=True).size
    assert one_more_slot[0] - fig.size[0] == 3 * (layout.cell_w + layout.pad)
    assert one_more_stage[1] - fig.size[1] == layout.cell_h + layout.pad
    no_attention = render_stage_figure(rng.random((3, h, w)), _stages(rng, k, h, w, n=3, attention=False))
    assert no_attention.size[0] == fig.size[0] - k * (layout.cell_w + layout.pad)


def test_stage_figure_cells_hold_the_pictures():
    rng = np.random.default_rng(0)
    h, w, k = 6, 5, 2
    image = rng.random((3, h, w))
    stages = _stages(rng, k, h, w, n=2)
    fig = np.array(render_stage_figure(image, stages, scale=2))
    layout = stage_figure_layout(h, w, k, 2, attention=True, scale=2)

    def cell(row, col):
        x, y = layout.origin(row, col)
        return fig[y : y + layout.cell_h : 2, x : x + layout.cell_w : 2]  # undo the ×2 upscaling

    np.testing.assert_array_equal(cell(1, 0), to_uint8_image(image))
    np.testing.assert_array_equal(cell(1, 1), to_uint8_image(stages[1]["reconstruction"]))
    np.testing.assert_array_equal(cell(0, 2 + 3), to_uint8_image(stages[0]["masks"][1]))  # slot 1 mask
    comp = component_images(stages[0]["masks"], stages[0]["means"])[1]
    np.testing.assert_array_equal(cell(0, 2 + 3 + 1), to_uint8_image(comp))  # slot 1 component
    np.testing.assert_array_equal(cell(0, 2 + 2), to_uint8_image(stages[0]["attention"][0]))  # slot 0 attention
    assert len(np.unique(cell(1, 2 + 2).reshape(-1, 3), axis=0)) == 1  # no attention at stage 1: a plain cell


def test_stage_figure_of_real_tetrominoes_is_written_and_readable(tmp_path):
    with h5py.File(FIXTURES / "tetrominoes_real10_test.h5", "r") as f:
        image = f["test/imgs"][0].transpose(2, 0, 1) / 255.0  # [3,35,35]
        masks = f["published_model_pred_masks"][0, :, :, :, 0]  # [4,35,35]
    means = np.repeat(image[None], 4, axis=0)  # every slot "explains" the image
    stage = {"name": "refine 3", "reconstruction": image, "masks": masks, "means": means, "attention": None}
    path = save_png(render_stage_figure(image, [stage], title="image 0"), tmp_path / "figs" / "image_0.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == stage_figure_layout(35, 35, 4, 1, attention=False).size
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["image_0.png"]  # no temporary file left


def test_stage_figure_rejects_bad_input():
    with pytest.raises(EmorlError, match="stages"):
        render_stage_figure(np.zeros((3, 4, 4)), [])
    with pytest.raises(EmorlError, match="masks"):
        component_images(np.zeros((2, 4, 4)), np.zeros((3, 3, 4, 4)))


def test_index_html_lists_every_figure_with_metrics(tmp_path):
    for i in range(2):
        save_png(Image.new("RGB", (4, 4), (i * 100, 0, 0)), tmp_path / f"image_{i}.png")
    entries = [
        {"png": "image_0.png", "metrics": {"FG-ARI": 0.98765, "MSE": 2.76e-4}},
        {"png": "image_1.png", "metrics": {"FG-ARI": float("nan"), "note": "<b>odd</b>"}, "title": "second"},
    ]
    path = write_index_html(tmp_path, entries, title="viz", summary={"images": 2})
    text = path.read_text()
    assert path == tmp_path / "index.html"
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert 'src="image_0.png"' in text and 'src="image_1.png"' in text
    assert "0.9877" in text and "0.000276" in text and "n/a" in text
    assert html.escape("<b>odd</b>") in text and "<b>odd</b>" not in text
    embedded = write_index_html(tmp_path, entries, embed_images=True).read_text()
    assert embedded.count("data:image/png;base64,") == 2
    with pytest.raises(EmorlError, match="no such file"):
        write_index_html(tmp_path, [{"png": "missing.png", "metrics": {}}], embed_images=True)


def test_traversal_gif_frames_and_size(tmp_path):
    t, h, w = 8, 35, 35
    ramp = np.linspace(0, 1, t)[:, None, None, None] * np.ones((t, 3, h, w))  # distinct frames
    path = write_traversal_gif(torch.tensor(ramp), tmp_path / traversal_gif_name(2, 0))
    assert path.name == "slot_2_row_0.gif"
    frames = iio.imread(path, index=None)
    assert frames.shape == (t, 105, 105, 3)
    assert np.abs(frames[:, 0, 0, 0].astype(int) - np.round(np.linspace(0, 255, t))).max() <= 2
    with Image.open(path) as im:
        assert im.n_frames == t and im.info["duration"] == 250 and im.info["loop"] == 0  # 4 fps, forever


def test_traversal_gif_rejects_bad_frames(tmp_path):
    with pytest.raises(EmorlError, match=r"\[T,3,H,W\]"):
        write_traversal_gif(np.zeros((3, 4, 4)), tmp_path / "x.gif")


def test_gif_sheet_has_a_row_per_traversal(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.random((8, 3, 10, 12)) for _ in range(3)] + [rng.random((5, 3, 10, 12))]
    path = write_gif_sheet(rows, tmp_path / "sheet.png", labels=[f"dim {i}" for i in range(4)], scale=2)
    with Image.open(path) as im:
        width, height = im.size
    pad, left = 2, 72
    assert width == left + 8 * (24 + pad) + pad
    assert height == 4 * (20 + pad) + pad
    unlabelled = write_gif_sheet(rows[:1], tmp_path / "one.png", scale=1)
    with Image.open(unlabelled) as im:
        assert im.size == (8 * (12 + pad) + pad, 10 + 2 * pad)
    with pytest.raises(EmorlError, match="labels"):
        write_gif_sheet(rows, tmp_path / "bad.png", labels=["only one"])
