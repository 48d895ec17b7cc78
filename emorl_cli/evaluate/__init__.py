"""Evaluation: pure metric functions and a batched runner.

- `ari`: `adjusted_rand_index` (ARI / FG-ARI, batched), `upsample_masks` (Pillow-exact resizing), `nan_summary`
- `matching`: `match_slots_to_objects` (Hungarian by mask IoU), `gather_matched`
- `dci`: `compute_dci` (one boosted-trees model per factor), `dataset_factors` (factor kinds per dataset)
- `activeness`: latent ranges, traversal latents, `traversal_activeness`, `top_k_active_dims`
- `runner`: `evaluate_ari`, `summarize_records`, `collect_codes`, `evaluate_dci` over a model and batches
- `inference`: `infer_images`, one `ImageRecord` per image (input, every stage of the trace, metrics)
- `traversals`: `latent_activeness` (latent ranges + activeness of a model), `latent_traversals` (GIF frames)

Submodules are imported explicitly (scikit-learn loads only where DCI is used).
"""
