"""The results file: JSON lines, one row each, appended, flushed and fsynced as each row finishes.

A row is a flat dict with its configuration hash under ``"key"`` and the sha256 of its payload under
``"sha256"`` (:func:`row_checksum`: the row's JSON with that field left out, keys sorted, compact).

**Several writers.**  Any number of processes may read, append to and rewrite one results file at once (two
studies given one output folder).  Every append and every rewrite holds an exclusive advisory lock
(``fcntl.flock``) on the file, and every read a shared one; an append is one ``O_APPEND`` write of a whole
line; a rewrite writes a temporary file and renames it into place while it holds the lock, and a writer that
was waiting for that lock sees the file was replaced, and locks the new one before it writes.  So no row is
ever lost, whichever processes write (where the platform has no ``flock``, as on Windows, or the filesystem
refuses it, the file is written unlocked: one writer at a time there).

**Damaged lines.**  Reading skips, with one line on stderr each, a line that is not UTF-8, not JSON, not a
row with a ``"key"``, or whose checksum does not match (a row changed on disk); such a row is missing, so a
study that needs it runs it again.  A torn last line (a process killed while writing it) is skipped
silently; appending after one starts a new line first.  Rewriting drops torn lines and lines superseded by a
whole row of the same key, and keeps every other line as it was (a damaged row of another study stays for
that study to re-run; delete such a line by hand to silence its warning).  Rows written before checksums
(no ``"sha256"``) are read as they are.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional

try:
    import fcntl
except ImportError:                   # Windows: no advisory locks; one writer at a time
    fcntl = None

__all__ = ["read_results", "append_row", "write_in_order", "atomic_write", "row_checksum", "CHECKSUM", "warning"]

#: The field that holds a row's checksum.
CHECKSUM = "sha256"
#: At most this many damaged lines are named one by one when a file is read; the rest are counted.
_NAMED = 5


def row_checksum(row: dict) -> str:
    """The sha256 of a row's payload: its JSON without the checksum field, keys sorted, compact."""
    payload = {k: v for k, v in row.items() if k != CHECKSUM}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- locking --------------------------------------------------------------------------------------------
_UNLOCKABLE = set()


@contextlib.contextmanager
def _locked(path: str, exclusive: bool):
    """An fd of ``path`` (created for an exclusive lock, ``None`` for a shared one when there is no file) held
    under an advisory lock; the lock is taken again when the file was replaced (renamed over) or removed
    while this process waited for it, so the fd is always the file that ``path`` names."""
    flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT) if exclusive else os.O_RDONLY
    for _ in range(1000):
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if exclusive:
                raise
            yield None
            return
        try:
            if not _lock(fd, path, exclusive):
                yield fd
                return
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)                # closing the fd releases its lock
    raise OSError(errno.EAGAIN, f"{path} was replaced 1000 times while this process waited for its lock")


def _lock(fd: int, path: str, exclusive: bool) -> bool:
    """Take the lock (blocking); ``False`` where locks are not to be had (no fcntl, a filesystem without them)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        return True
    except OSError as err:
        if path not in _UNLOCKABLE:
            _UNLOCKABLE.add(path)
            warning(f"cannot lock {path} ({err.strerror or err}); it is written unlocked: run one study at a time "
                  f"on it")
        return False


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return b"".join(iter(lambda: os.read(fd, 1 << 20), b""))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def warning(text: str) -> None:
    """One line on stderr: ``sdekit: warning: <text>``."""
    print(f"sdekit: warning: {text}", file=sys.stderr, flush=True)


# -- reading --------------------------------------------------------------------------------------------
def _parse(raw: bytes):
    """``(row, None)`` for a whole row, else ``(row or None, why)``: ``row`` is the parsed dict where there is
    one (a row whose checksum fails keeps its key, so a rewrite can tell it was superseded)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"is not UTF-8 (byte {err.start + 1})"
    try:
        row = json.loads(text)
    except ValueError:
        return None, "is not a JSON row (a torn or damaged line)"
    if not isinstance(row, dict) or not isinstance(row.get("key"), str):
        return None, 'is not a row (no "key")'
    claimed = row.pop(CHECKSUM, None)
    if claimed is not None:
        try:
            good = claimed == row_checksum(row)
        except ValueError:
            good = False
        if not good:
            return row, "fails its checksum (the row was changed on disk)"
    return row, None


def _scan(fd: int):
    """Every non-blank line of the file open at ``fd``: ``(line number, raw, row, why, torn)``; ``torn``: the
    last line, without its newline."""
    lines = _read_all(fd).split(b"\n")
    last = len(lines) - 1                    # the piece after the final newline ('' when the file ends in one)
    for i, raw in enumerate(lines):
        if raw.strip():
            yield (i + 1, raw.strip(), *_parse(raw.strip()), i == last)


def read_results(path, required: Iterable[str] = (), keys: Optional[Iterable[str]] = None,
                 warn: bool = True) -> Dict[str, dict]:
    """Rows of a JSON-lines results file by key (the last whole row of each key), without their checksums.

    A damaged line (not UTF-8, not JSON, no ``"key"``, a checksum that fails) is skipped with one line on
    stderr each (``warn``); a torn last line (a kill mid-write) silently.  ``required``: fields a row of one of
    ``keys`` (default: any row) must have; a row without them is skipped the same way (and so run again).
    """
    if path is None:
        return {}
    path = os.fspath(path)
    required = tuple(required)
    wanted = None if keys is None else set(keys)
    out, bad = {}, []
    with _locked(path, exclusive=False) as fd:
        if fd is None:
            return {}
        for n, raw, row, why, torn in _scan(fd):
            if why is None and required and (wanted is None or row["key"] in wanted):
                lacking = [k for k in required if k not in row]
                if lacking:
                    why = f"lacks {', '.join(lacking)}"
            if why is None:
                out[row["key"]] = row
            elif not (torn and why.startswith("is not a JSON row")):
                bad.append((n, why))
    if warn and bad:
        for n, why in bad[:_NAMED]:
            warning(f"line {n} of {path} {why}: skipped, and its row is run again if this study needs it (delete "
                  f"the line to silence this)")
        if len(bad) > _NAMED:
            more = ", ".join(str(n) for n, _ in bad[_NAMED:_NAMED + 10]) + (", ..." if len(bad) > _NAMED + 10 else "")
            warning(f"{len(bad) - _NAMED} more damaged lines in {path} (lines {more}) skipped the same way")
    return out


# -- writing --------------------------------------------------------------------------------------------
def _line(row: dict) -> bytes:
    """The row as one JSON line with its checksum (private ``_`` fields left out; NaN and infinities as null)."""
    text = json.dumps({k: _finite(v) for k, v in row.items() if not k.startswith("_") and k != CHECKSUM},
                      default=repr, allow_nan=False)
    clean = json.loads(text)                 # the payload as a reader will see it
    clean[CHECKSUM] = row_checksum(clean)
    return json.dumps(clean, allow_nan=False).encode("ascii") + b"\n"


def append_row(path, row: dict) -> None:
    """Append one row (with its checksum) as a JSON line in one ``O_APPEND`` write, under an exclusive lock,
    fsynced; a new line is started first after a torn one."""
    path = os.fspath(path)
    line = _line(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _locked(path, exclusive=True) as fd:
        size = os.fstat(fd).st_size
        if size > 0:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                line = b"\n" + line
        _write_all(fd, line)
        os.fsync(fd)


def write_in_order(path, keys: List[str]) -> None:
    """Rewrite the results file with the rows of ``keys`` in that order, then every other line as it was.

    Under the file's exclusive lock: each line kept as written; of a key of ``keys``, its last whole row, and
    its damaged copies dropped; torn lines dropped; the new file renamed into place (atomic) before the lock is
    released, so rows other processes append meanwhile land in the new file."""
    path = os.fspath(path)
    wanted = set(keys)
    with _locked(path, exclusive=True) as fd:
        mine, others = {}, []
        for _, raw, row, why, _ in _scan(fd):
            if why is None and row["key"] in wanted:
                mine[row["key"]] = raw          # the last one, as read_results reads it
            elif why is not None and why.startswith("is not a JSON row"):
                continue                        # torn
            else:
                others.append((row["key"] if row is not None else None, why, raw))
        kept = [raw for key, why, raw in others if not (why is not None and key in mine)]
        body = [mine[k] for k in keys if k in mine] + kept
        atomic_write(path, lambda fh: fh.write(b"".join(t + b"\n" for t in body)))


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
