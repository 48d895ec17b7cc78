"""Procedural Multi-dSprites, "colored on grayscale" variant (after DeepMind's multi_object_datasets).

64×64 RGB; a uniform grey background of random brightness; 2–5 sprites (square, ellipse, heart) at a
random position, scale and orientation, each of a random HSV colour (hue uniform, saturation and value in
[0.5, 1]); later sprites occlude earlier ones, and every sprite keeps at least `MIN_VISIBLE` visible pixels.

masks [N, 6, 64, 64, 1] uint8 0/255: entity 0 the background, entities 1..k the sprites in drawing order,
the rest all 0; the non-empty masks partition the image.

factors [N, 6, 9] float32 per entity, columns (see registry.MULTI_DSPRITES_FACTORS):
x, y (sprite centre, column / 63 and row / 63, in [0, 1]), shape (1 square, 2 ellipse, 3 heart; 0 for the
background), scale (0.5–1), orientation (radians, [0, 2π)), r, g, b (in [0, 1]; the grey level for the
background), visibility (1 for the background and each sprite, 0 for the empty entities).
"""

from __future__ import annotations

import numpy as np

SIZE = 64
MAX_SPRITES = 5
MIN_SPRITES = 2
ENTITIES = MAX_SPRITES + 1
FACTOR_DIMS = 9
MIN_VISIBLE = 10
CHUNK = 1024
SHAPE_NAMES = {1: "square", 2: "ellipse", 3: "heart"}
# Half-size of a sprite at scale 1, in pixels; centres stay MARGIN px away from the border.
BASE_HALF = 9.0
MARGIN = 8.0

# Sprites are rasterised in a (2·HALO+1)² window around their centre pixel (every sprite fits in it).
HALO = 12
_WR, _WC = np.mgrid[-HALO : HALO + 1, -HALO : HALO + 1]  # window offsets, [25, 25] each


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV → RGB, all in [0, 1]; returns [..., 3]."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )  # [6, ..., 3]
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def _inside(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, scale: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Coverage [n, S, 64, 64] (bool) of sprites with parameters [n, S] each (pixel centres inside the shape)."""
    n, k = shape.shape
    r0 = np.rint(cy).astype(np.int64)[..., None, None] + _WR  # [n, S, 25, 25] pixel rows of the window
    c0 = np.rint(cx).astype(np.int64)[..., None, None] + _WC
    inv = (1.0 / (BASE_HALF * scale)).astype(np.float32)[..., None, None]
    dx = (c0.astype(np.float32) - cx[..., None, None]) * inv  # [n, S, 25, 25]
    dy = (r0.astype(np.float32) - cy[..., None, None]) * inv
    cos = np.cos(theta).astype(np.float32)[..., None, None]
    sin = np.sin(theta).astype(np.float32)[..., None, None]
    u = cos * dx + sin * dy  # sprite frame
    v = -sin * dx + cos * dy
    s = shape[..., None, None]
    square = np.maximum(np.abs(u), np.abs(v)) <= 0.85
    ellipse = u**2 + (2.0 * v) ** 2 <= 1.1**2
    hu, hv = u * np.float32(1.05), v * np.float32(-1.05) + np.float32(0.15)  # heart points down in the image
    hu2 = hu * hu
    base = hu2 + hv * hv - np.float32(1.0)
    heart = base * base * base <= hu2 * hv * hv * hv
    window = np.where(s == 1, square, np.where(s == 2, ellipse, heart))
    canvas = np.zeros((n, k, SIZE + 2 * HALO, SIZE + 2 * HALO), bool)  # padded so windows never fall off
    ii = np.arange(n)[:, None, None, None]
    kk = np.arange(k)[None, :, None, None]
    canvas[ii, kk, r0 + HALO, c0 + HALO] = window
    return canvas[:, :, HALO:-HALO, HALO:-HALO]


def _draw(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    count = rng.integers(MIN_SPRITES, MAX_SPRITES + 1, size=n)  # sprites per image
    present = np.arange(MAX_SPRITES)[None, :] < count[:, None]  # [n, 5]
    shape = rng.integers(1, 4, size=(n, MAX_SPRITES))
    scale = rng.uniform(0.5, 1.0, size=(n, MAX_SPRITES)).astype(np.float32)
    theta = rng.uniform(0.0, 2 * np.pi, size=(n, MAX_SPRITES)).astype(np.float32)
    cx = rng.uniform(MARGIN, SIZE - 1 - MARGIN, size=(n, MAX_SPRITES)).astype(np.float32)
    cy = rng.uniform(MARGIN, SIZE - 1 - MARGIN, size=(n, MAX_SPRITES)).astype(np.float32)
    hue = rng.random((n, MAX_SPRITES))
    sat = rng.uniform(0.5, 1.0, size=(n, MAX_SPRITES))
    val = rng.uniform(0.5, 1.0, size=(n, MAX_SPRITES))
    rgb = _hsv_to_rgb(hue, sat, val).astype(np.float32)  # [n, 5, 3]
    grey = rng.integers(0, 256, size=n).astype(np.uint8)

    cover = _inside(shape, cx, cy, scale, theta) & present[..., None, None]  # [n, 5, 64, 64]
    # Later sprites occlude earlier ones: sprite i is visible where no later sprite covers the pixel.
    visible = np.empty_like(cover)
    covered = np.zeros_like(cover[:, 0])  # [n, 64, 64] pixels taken by a later sprite
    for k in range(MAX_SPRITES - 1, -1, -1):
        visible[:, k] = cover[:, k] & ~covered
        covered |= cover[:, k]
    return {
        "count": count,
        "present": present,
        "shape": shape,
        "scale": scale,
        "theta": theta,
        "cx": cx,
        "cy": cy,
        "rgb": rgb,
        "grey": grey,
        "visible": visible,
    }


def generate(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`n` Multi-dSprites images.

    Returns:
        imgs uint8 [n, 64, 64, 3]; masks uint8 [n, 6, 64, 64, 1] (0/255, entity 0 background);
        factors float32 [n, 6, 9] (columns in the module docstring).
    """
    scene = _draw(n, rng)
    todo = np.flatnonzero(_too_hidden(scene))
    while todo.size:  # redraw scenes in which a sprite is (almost) fully hidden
        again = _draw(todo.size, rng)
        for key, value in again.items():
            scene[key][todo] = value
        todo = todo[_too_hidden(again)]

    visible = scene["visible"]  # [n, 5, 64, 64]
    background = ~visible.any(axis=1)  # [n, 64, 64]
    masks = np.zeros((n, ENTITIES, SIZE, SIZE, 1), np.uint8)
    masks[:, 0, :, :, 0] = background * np.uint8(255)
    masks[:, 1:, :, :, 0] = visible * np.uint8(255)

    colour_u8 = np.round(scene["rgb"] * 255).astype(np.uint8)  # [n, 5, 3]
    imgs = np.broadcast_to(scene["grey"][:, None, None, None], (n, SIZE, SIZE, 3)).copy()
    for k in range(MAX_SPRITES):
        sel = visible[:, k]  # [n, 64, 64]
        imgs[sel] = np.broadcast_to(colour_u8[:, k, None, None, :], (n, SIZE, SIZE, 3))[sel]

    present = scene["present"]
    factors = np.zeros((n, ENTITIES, FACTOR_DIMS), np.float32)
    factors[:, 0, 5:8] = (scene["grey"].astype(np.float32) / 255.0)[:, None]
    factors[:, 0, 8] = 1.0
    body = np.stack(
        [
            scene["cx"] / (SIZE - 1),
            scene["cy"] / (SIZE - 1),
            scene["shape"].astype(np.float32),
            scene["scale"],
            scene["theta"],
            scene["rgb"][..., 0],
            scene["rgb"][..., 1],
            scene["rgb"][..., 2],
            np.ones_like(scene["scale"]),
        ],
        axis=-1,
    )  # [n, 5, 9]
    factors[:, 1:] = body * present[..., None]
    return {"imgs": imgs, "masks": masks, "factors": factors}


def _too_hidden(scene: dict[str, np.ndarray]) -> np.ndarray:
    """[n] True where a present sprite shows fewer than MIN_VISIBLE pixels."""
    pixels = scene["visible"].sum(axis=(2, 3))  # [n, 5]
    return ((pixels < MIN_VISIBLE) & scene["present"]).any(axis=1)


def layout(n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the datasets `generate(n)` returns."""
    return {
        "imgs": ((n, SIZE, SIZE, 3), "uint8"),
        "masks": ((n, ENTITIES, SIZE, SIZE, 1), "uint8"),
        "factors": ((n, ENTITIES, FACTOR_DIMS), "float32"),
    }
