"""One run per folder: an advisory lock (the ``filelock`` package) on WORK, MODEL_DIR or OUT.

``ingest`` and ``masks build`` lock WORK, ``train`` locks MODEL_DIR, ``balance`` locks OUT. A second run on a
locked folder is refused at once with :class:`FolderInUseError` (exit 3) naming the folder and the holder's pid
and host, read from a small lock-info file beside the lock (no patient data: stage, pid, host, start time).

The lock is an OS lock (``flock``) on ``FOLDER/.medsoft-aug.lock``: the kernel releases it when its process ends,
however it ends, so the lock of a killed run is stale and the next run takes it over (and rewrites the info
file). A run that ends normally removes both files. Stages clean their temporary files only while holding the lock, so a second run never deletes the
first one's work in progress.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .errors import InputError

LOCK_NAME = ".medsoft-aug.lock"
INFO_NAME = ".medsoft-aug.lock.json"
#: the names a held lock puts in its folder (a stage that checks a folder is empty ignores them)
LOCK_FILES = frozenset({LOCK_NAME, INFO_NAME})


class FolderInUseError(InputError):
    """Another medsoft-aug run holds the folder's lock (exit 3)."""


def _holder(folder: Path) -> str:
    """'stage, pid N on host H since T' from the info file, or a neutral phrase when it is unreadable."""
    try:
        info = json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])[:100]
        stage, since = str(info.get("stage", "?"))[:40], str(info.get("started", "?"))[:40]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "another process (no lock information)"
    return f"`{stage}` (pid {pid} on host {host}, since {since})"


def _write_info(folder: Path, stage: str) -> None:
    info = {"stage": stage, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = folder / f"{INFO_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INFO_NAME)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, stage: str, *, what: str = "folder") -> Iterator[Path]:
    """Hold the advisory lock of ``folder`` (created if missing) for the duration of the block. A folder the
    lock created is removed again when the block fails and leaves it empty.

    Args:
        folder: WORK, MODEL_DIR or OUT.
        stage: the command taking the lock (recorded for the message a second run prints).
        what: how messages name the folder ("WORK", "MODEL_DIR", "--out").

    Raises:
        FolderInUseError: another live process holds the lock (never waits).
        InputError: the folder cannot be created or is not a folder.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    created = not folder.exists()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what} {folder} cannot be created ({type(e).__name__})") from None
    lock = FileLock(str(folder / LOCK_NAME), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUseError(f"{what} {folder} is in use by another medsoft-aug run: {_holder(folder)}; "
                               "wait for it to finish or choose another folder") from None
    except OSError as e:
        raise InputError(f"{what} {folder}: cannot take the run lock ({type(e).__name__})") from None
    failed = False
    try:
        _write_info(folder, stage)
        yield folder
    except BaseException:
        failed = True
        raise
    finally:
        # Remove both files while still holding the lock, so a finished run leaves nothing behind.
        for name in (INFO_NAME, LOCK_NAME):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
        lock.release()
        if failed and created:  # the lock made the folder and the run failed leaving nothing in it
            with contextlib.suppress(OSError):
                folder.rmdir()
