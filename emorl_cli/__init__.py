"""emorl: EfficientMORL (Emami et al., ICML 2021) as an installable, tested toolkit.

`emorl_cli.load(path)` loads a trained model for notebooks and scripts (`emorl_cli.api`).

The library never prints. Progress goes to sinks the caller passes (`data.progress.Progress`,
`training.progress.TrainingProgress`, callbacks over images in `evaluate`), results come back as values
and files, and one-line notes (a lock taken over, a torn metrics line dropped, a file read from disk
instead of memory) go to the `emorl` logger, which the CLI prints as yellow `note:` lines. Without a
handler of the caller's, notes are dropped rather than written to stderr.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("emorl").addHandler(logging.NullHandler())


def load(path, config=None, device="auto"):
    """Load a trained model to segment pictures with: `emorl_cli.load(path, config=None, device="auto")`.

    `path` is an emorl checkpoint or an original EfficientMORL `.pth` (then `config` names the config it was
    trained with); returns an `emorl_cli.api.Model`, whose `segment(images)` gives masks, labels, components,
    reconstructions and slot latents. See `emorl_cli.api.load` and docs/using.md.
    """
    from emorl_cli.api import load as load_model  # imported on first use: `import emorl_cli` stays light

    return load_model(path, config=config, device=device)
