"""Training on Accelerate: the original's semantics (Adam, warm-up + decay, clipping, refinement curriculum,
GECO warm start), exact resume, run directories and multi-process correctness."""
