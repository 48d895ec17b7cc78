"""emorl: EfficientMORL (Emami et al., ICML 2021) as an installable, tested toolkit.

The library never prints. Progress goes to sinks the caller passes (`data.progress.Progress`,
`training.progress.TrainingProgress`, callbacks over images in `evaluate`), results come back as values
and files, and one-line notes (a lock taken over, a torn metrics line dropped, a file read from disk
instead of memory) go to the `emorl` logger, which the CLI prints as yellow `note:` lines. Without a
handler of the caller's, notes are dropped rather than written to stderr.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("emorl").addHandler(logging.NullHandler())
