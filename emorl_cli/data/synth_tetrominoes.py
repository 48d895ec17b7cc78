"""Procedural Tetrominoes, indistinguishable from DeepMind's (multi_object_datasets) images.

What the real images show (checked against 20 real test images in tests/data/fixtures):

- 35×35 RGB, black background, exactly 3 tetrominoes that never overlap and lie fully inside; pieces may
  touch (share an edge); their order in the masks is random (unrelated to position, shape or colour).
- Each piece is 4 blocks of 5×5 px at any pixel offset (not on a 5-px grid); every block carries the same
  bevel, per lit channel (rows top to bottom): 191 255 255 255 223 / 127 159 159 159 191 (×3) /
  95 63 63 63 127. Unlit channels are 0, so a channel only takes the values {0, 63, 95, 127, 159, 191, 223, 255}.
- 6 pure colours: the RGB corners except black and white; repeats within an image are allowed.
- 19 shape orientations with ids 1..19 (0 = background), see `SHAPES`.
- masks [N, 4, 35, 35, 1] uint8 0/255, entity 0 the background (925 px), each piece exactly 100 px.
- factors [N, 4, 7] float32 per entity: x = top row of the piece's bounding box, y = its left column,
  shape id, colour r, g, b (0/1), visibility (1; the background row is 0 0 0 0 0 0 1).
"""

from __future__ import annotations

import numpy as np

SIZE = 35
BLOCK = 5
PIECES = 3
ENTITIES = PIECES + 1
FACTOR_DIMS = 7
CHUNK = 8192  # images generated at a time (bounded memory, one progress tick each)

# The bevel every 5×5 block carries in each lit channel (rows top to bottom).
BEVEL = np.array(
    [
        [191, 255, 255, 255, 223],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [95, 63, 63, 63, 127],
    ],
    dtype=np.uint8,
)

# Shape id → block layout (rows of the bounding box, 1 = a 5×5 block). Ids 2, 3, 5–7, 9–19 are read off the
# factors of real images; 1, 4 and 8 never occur there and are the only orientations left for them (ids 3–6
# are the 3-wide L/J pieces, 7–10 the 3-tall ones), so they are inferred.
SHAPES: dict[int, tuple[str, ...]] = {
    1: ("1111",),  # I, horizontal (inferred)
    2: ("1", "1", "1", "1"),  # I, vertical
    3: ("111", "100"),
    4: ("100", "111"),  # (inferred)
    5: ("001", "111"),
    6: ("111", "001"),
    7: ("11", "01", "01"),
    8: ("01", "01", "11"),  # (inferred)
    9: ("11", "10", "10"),
    10: ("10", "10", "11"),
    11: ("110", "011"),
    12: ("011", "110"),
    13: ("01", "11", "10"),
    14: ("10", "11", "01"),
    15: ("010", "111"),
    16: ("111", "010"),
    17: ("01", "11", "01"),
    18: ("10", "11", "10"),
    19: ("11", "11"),  # O
}
NUM_SHAPES = len(SHAPES)

# The 6 pure colours (r, g, b in {0, 1}, neither black nor white).
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8)


def _shape_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per shape id (index 0 unused): pixel rows/cols [20, 100], bevel values [20, 100], height, width."""
    rows = np.zeros((NUM_SHAPES + 1, 4 * BLOCK * BLOCK), np.int64)
    cols = np.zeros_like(rows)
    vals = np.zeros((NUM_SHAPES + 1, rows.shape[1]), np.uint8)
    heights = np.zeros(NUM_SHAPES + 1, np.int64)
    widths = np.zeros(NUM_SHAPES + 1, np.int64)
    br, bc = np.mgrid[0:BLOCK, 0:BLOCK]
    for sid, layout in SHAPES.items():
        rr, cc, vv = [], [], []
        for i, line in enumerate(layout):
            for j, cell in enumerate(line):
                if cell == "1":
                    rr.append(i * BLOCK + br.ravel())
                    cc.append(j * BLOCK + bc.ravel())
                    vv.append(BEVEL.ravel())
        rows[sid], cols[sid], vals[sid] = np.concatenate(rr), np.concatenate(cc), np.concatenate(vv)
        heights[sid], widths[sid] = len(layout) * BLOCK, len(layout[0]) * BLOCK
    return rows, cols, vals, heights, widths


_ROWS, _COLS, _VALS, _HEIGHTS, _WIDTHS = _shape_tables()
PIXELS_PER_PIECE = _ROWS.shape[1]  # 100


def shape_pattern(shape_id: int) -> np.ndarray:
    """Boolean [h, w] pixel mask of a shape id (for tests and docs)."""
    out = np.zeros((_HEIGHTS[shape_id], _WIDTHS[shape_id]), bool)
    out[_ROWS[shape_id], _COLS[shape_id]] = True
    return out


def _sample_pieces(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shapes, colours, top rows and left columns [n, 3] for n images with non-overlapping pieces.

    Shapes and colours are uniform and independent; positions are uniform over the placements that keep
    every piece inside the image and apart from the others (all three are redrawn until none overlap, so
    the shape frequencies stay uniform).
    """
    shapes = rng.integers(1, NUM_SHAPES + 1, size=(n, PIECES))
    colours = rng.integers(0, len(COLOURS), size=(n, PIECES))
    tops = np.empty((n, PIECES), np.int64)
    lefts = np.empty((n, PIECES), np.int64)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        s = shapes[todo]
        t = (rng.random((m, PIECES)) * (SIZE - _HEIGHTS[s] + 1)).astype(np.int64)
        left = (rng.random((m, PIECES)) * (SIZE - _WIDTHS[s] + 1)).astype(np.int64)
        flat = (t[..., None] + _ROWS[s]) * SIZE + left[..., None] + _COLS[s]  # [m, 3, 100]
        flat = flat + (np.arange(m) * SIZE * SIZE)[:, None, None]
        counts = np.bincount(flat.ravel(), minlength=m * SIZE * SIZE).reshape(m, -1)  # [m, 35*35]
        ok = counts.max(axis=1) <= 1
        tops[todo[ok]], lefts[todo[ok]] = t[ok], left[ok]
        todo = todo[~ok]
    return shapes, colours, tops, lefts


def generate(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`n` Tetrominoes images.

    Returns:
        imgs uint8 [n, 35, 35, 3]; masks uint8 [n, 4, 35, 35, 1] (0/255, entity 0 background);
        factors float32 [n, 4, 7] (x top row, y left column, shape id, r, g, b, visibility).
    """
    shapes, colours, tops, lefts = _sample_pieces(n, rng)
    rows = tops[..., None] + _ROWS[shapes]  # [n, 3, 100]
    cols = lefts[..., None] + _COLS[shapes]  # [n, 3, 100]
    img_idx = np.broadcast_to(np.arange(n)[:, None, None], rows.shape)
    piece_idx = np.broadcast_to(np.arange(1, ENTITIES)[None, :, None], rows.shape)

    masks = np.zeros((n, ENTITIES, SIZE, SIZE), np.uint8)
    masks[img_idx, piece_idx, rows, cols] = 255
    masks[:, 0] = 255 - masks[:, 1:].max(axis=1)

    imgs = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    rgb = COLOURS[colours]  # [n, 3, 3]
    shade = _VALS[shapes]  # [n, 3, 100]
    imgs[img_idx, rows, cols] = shade[..., None] * rgb[:, :, None, :]

    factors = np.zeros((n, ENTITIES, FACTOR_DIMS), np.float32)
    factors[:, 0, 6] = 1.0
    factors[:, 1:, 0] = tops
    factors[:, 1:, 1] = lefts
    factors[:, 1:, 2] = shapes
    factors[:, 1:, 3:6] = rgb
    factors[:, 1:, 6] = 1.0
    return {"imgs": imgs, "masks": masks[..., None], "factors": factors}


def layout(n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the datasets `generate(n)` returns."""
    return {
        "imgs": ((n, SIZE, SIZE, 3), "uint8"),
        "masks": ((n, ENTITIES, SIZE, SIZE, 1), "uint8"),
        "factors": ((n, ENTITIES, FACTOR_DIMS), "float32"),
    }
