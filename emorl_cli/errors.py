"""Errors raised by library code.

Every message says what happened, the value seen, and what to do. The CLI turns an
`EmorlError` into one red line and exit code 1 (the traceback only with `--debug`).
"""


class EmorlError(Exception):
    """Base class of every error emorl reports to its user."""


class InputError(EmorlError):
    """A command-line value is out of range or missing (for example --minutes 0)."""


class ConfigError(EmorlError):
    """A configuration file or override is invalid."""


class DataError(EmorlError):
    """A dataset file is missing, malformed, or does not match the config."""


class DownloadError(EmorlError):
    """A download failed (network, HTTP status, checksum, disk)."""


class CheckpointError(EmorlError):
    """A checkpoint cannot be read or does not match the model."""


class TrainingError(EmorlError):
    """Training cannot continue (for example a non-finite loss)."""


class OutputError(EmorlError):
    """An output file or folder cannot be written (a full disk, a read-only folder, a file in the way)."""


class BusyError(EmorlError):
    """Another running emorl process holds the folder (a training run folder, a data folder)."""
