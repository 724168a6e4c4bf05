"""The results file: JSON lines, one row each, appended, flushed and fsynced as each row finishes.

A row is a flat dict with its configuration hash under ``"key"``.  Reading skips a torn last line (a
process killed while writing it); appending after one starts a new line first.
"""

import json
import math
import os
from typing import Dict

__all__ = ["read_results", "append_row"]


def read_results(path) -> Dict[str, dict]:
    """Rows of a JSON-lines results file by key; a torn last line (a kill mid-write) is skipped."""
    rows = {}
    if path is None or not os.path.exists(path):
        return rows
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
    return rows


def append_row(path, row: dict) -> None:
    """Append one row as a JSON line, flushed and fsynced; starts a new line after a torn one."""
    text = json.dumps({k: _finite(v) for k, v in row.items() if not k.startswith("_")}, default=_json_default,
                      allow_nan=False)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "ab") as fh:
        if fh.tell() > 0:
            with open(path, "rb") as rd:
                rd.seek(-1, os.SEEK_END)
                if rd.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write(text.encode("utf-8") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _finite(v):
    """Strict JSON: a NaN or infinite float (an error that could not be measured) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_default(v):
    return repr(v)
