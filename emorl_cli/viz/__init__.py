"""Pictures: arrays in, PNG figures, traversal GIFs and an index.html out (Pillow + imageio only).

- `figures`: `render_stage_figure` (a row per inference stage), `component_images`, `save_png`
- `html`: `write_index_html`
- `gifs`: `write_traversal_gif` (`slot_{k}_row_{r}.gif`), `write_gif_sheet`
- `pipeline`: `make_viz`, `make_gifs` over a model and batches
"""
