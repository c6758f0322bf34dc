"""One process at a time in a run directory: an exclusive advisory lock on ``DIR/.lock``.

Two commands writing the same directory (``train``, ``train-entropy``, ``precompute``, ``compare``
with the same ``--out``) would interleave their checkpoints, metrics and bundle; so each holds this
lock for as long as it writes, and a second one fails at once, naming the directory and the pid of
the holder. The lock is ``fcntl.flock`` on an open file: the kernel drops it when the holder exits
for any reason, SIGKILL included, so a killed run never leaves a stuck lock. The file itself stays
(deleting it on release would let a third process lock a new file while a second still waits on
the old one); it holds the holder's pid, for the message only. Linux and macOS; the directory
should be on a local filesystem (``flock`` over NFS is not reliable everywhere).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class RunDirLocked(ValueError):
    """Another process holds the directory's lock; the message names the directory and its pid."""


def check_out_dir(directory: str | os.PathLike, flag: str = "--out") -> Path:
    """``directory`` as a Path; an existing file (not a directory) there is a clear error."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"{flag} {d} exists and is not a directory")
    for parent in d.parents:  # mkdir would fail on a file part way up, with a traceback
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {d}: {parent} is a file, not a directory")
            break
    return d


@contextmanager
def locked(directory: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Create ``directory`` if needed and hold its exclusive lock for the block.

    Raises ``RunDirLocked`` (a ``ValueError``) when another process holds it.
    """
    d = check_out_dir(directory, flag)
    d.mkdir(parents=True, exist_ok=True)
    f = open(d / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirLocked(f"{flag} {d} is in use by another bltkit process (pid {holder}); wait for it to "
                               f"finish, or choose another {flag}") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield d
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()
