"""Read a small JSON file (the model manifest, a site profile) with caps on its size and
nesting, so a huge or deeply nested file is refused with one line instead of exhausting memory
or the recursion limit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 4 * 2**20
MAX_JSON_DEPTH = 32


class JsonFileError(ValueError):
    """A JSON file that cannot be read, is too large or too deep, or is not JSON; the message
    is the reason without the path ('is not valid JSON: ...'), for the caller to prefix."""


def _bracket_depth(text: str) -> int:
    """Deepest bracket nesting outside strings: checked before parsing (json.loads recurses)."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed file; JsonFileError (one line) if it cannot be read, is over `max_bytes`,
    nests deeper than `max_depth` or is not valid UTF-8 JSON."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise JsonFileError(f"cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise JsonFileError(f"is over {max_bytes / 2**20:g} MiB: not a file this runtime writes")
    try:
        text = data.decode("utf-8-sig")
        if _bracket_depth(text) > max_depth:
            raise JsonFileError(f"nests deeper than {max_depth} levels")
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JsonFileError(f"is not valid JSON: {str(err).splitlines()[0]}") from None
    return value
