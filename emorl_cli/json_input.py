"""Reading JSON that emorl did not necessarily write well: one reader for every JSON file or answer.

`metrics.jsonl`, `finished.json`, a lock file, the data manifest, a Zenodo record, an original config: each is
read with `loads_strict`, `parse_json` or `read_json`, which turn every way the bytes can fail — not UTF-8,
not JSON, nested too deeply for the parser (a `RecursionError`), a number too long to convert, a folder where
the file belongs — into one `EmorlError` of the caller's class naming the file, what was wrong and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from emorl_cli.errors import EmorlError


class JsonProblem(ValueError):
    """Why some bytes are not the JSON emorl expects (the message is a short phrase)."""


def loads_strict(data: str | bytes) -> Any:
    """`json.loads` that raises `JsonProblem` (a ValueError) for every failure: bytes that are not UTF-8,
    invalid JSON, nesting too deep for the parser, numbers too long to convert."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonProblem(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise JsonProblem(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:  # `[[[[…` thousands deep: the parser's own recursion limit
        raise JsonProblem("nested too deeply") from None
    except ValueError:  # an integer of thousands of digits
        raise JsonProblem("a number with too many digits") from None


def parse_json(
    data: str | bytes, source: str, *, error: type[EmorlError] = EmorlError, advice: str = "check the file"
) -> Any:
    """`data` parsed as JSON, or one line: `error("SOURCE is not valid JSON (why); ADVICE")`."""
    try:
        return loads_strict(data)
    except JsonProblem as exc:
        raise error(f"{source} cannot be read as JSON ({exc}); {advice}") from None


def read_json(
    path: str | Path,
    *,
    error: type[EmorlError] = EmorlError,
    advice: str = "check the file",
    expect: Optional[type] = None,
) -> Any:
    """The JSON in file `path`, or one line naming it: missing, a folder, unreadable, not UTF-8, not JSON,
    too deeply nested, or (with `expect`, e.g. `dict`) not of the expected kind."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder, not a JSON file; {advice}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} does not exist; {advice}") from None
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or exc}); {advice}") from None
    value = parse_json(data, str(path), error=error, advice=advice)
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "an object", list: "a list"}.get(expect, expect.__name__)
        raise error(f"{path} must hold a JSON {kind}, not {type(value).__name__}; {advice}")
    return value
