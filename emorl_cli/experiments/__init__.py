"""Experiments over many runs: `emorl sweep` (sweep.py) runs them, `emorl report` (report.py, curves.py)
summarises them as the paper's tables and learning curves."""
