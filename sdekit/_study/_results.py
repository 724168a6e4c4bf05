"""The results file: JSON lines, one row each, appended, flushed and fsynced as each row finishes.

A row is a flat dict with its configuration hash under ``"key"``.  Reading skips a torn last line (a
process killed while writing it); appending after one starts a new line first.
"""

import json
import math
import os
from typing import Callable, Dict, List

__all__ = ["read_results", "append_row", "write_in_order", "atomic_write"]


def _lines(path):
    """``(row, line)`` for each whole row of the file in file order: a torn line (a kill mid-write), a blank
    one or one without a ``"key"`` is skipped."""
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if not text:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                yield row, text


def read_results(path) -> Dict[str, dict]:
    """Rows of a JSON-lines results file by key; a torn last line (a kill mid-write) is skipped."""
    if path is None or not os.path.exists(path):
        return {}
    return {row["key"]: row for row, _ in _lines(path)}


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


def write_in_order(path, keys: List[str]) -> None:
    """Rewrite the results file with the rows of ``keys`` in that order, then any other rows as they were;
    each line kept as written, a torn line dropped, the new file renamed into place (atomic)."""
    wanted = set(keys)
    mine, others = {}, []
    for row, text in _lines(path):
        if row["key"] in wanted:
            mine[row["key"]] = text          # the last one, as read_results reads it
        else:
            others.append(text)
    body = [mine[k] for k in keys if k in mine] + others
    atomic_write(path, lambda fh: fh.write("".join(t + "\n" for t in body).encode("utf-8")))


def atomic_write(path, write: Callable) -> None:
    """``write(fh)`` into a temporary binary file beside ``path``, flushed and fsynced, then renamed into place:
    a file at ``path`` is always whole (the temporary one is removed if writing fails)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _finite(v):
    """Strict JSON: a NaN or infinite float (an error that could not be measured) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_default(v):
    return repr(v)
