"""Pictures: arrays in, PNG figures, traversal GIFs and an index.html out (Pillow + imageio only).

- `figures`: `render_stage_figure` (a row per inference stage), `component_images`, `save_png`
- `html`: `write_index_html`
- `gifs`: `write_traversal_gif` (`slot_{k}_row_{r}.gif`), `write_gif_sheet`, `write_traversals`
- `pages`: `write_stage_pages` (the `emorl viz` folder: a figure per image record, index.html, viz.npz)

viz never runs a model: the records and traversals it draws come from `emorl_cli.evaluate` (inference.py,
traversals.py), and `emorl_cli.pictures` puts the two together.
"""
