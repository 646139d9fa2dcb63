"""CLI edge: stdout carries results only (``--json`` = one JSON document); progress, logs and errors go to stderr.

``guarded`` turns project exceptions into one ``Error: ...`` line and the documented exit code (with ``--json``
also one ``{"error": ..., "exit_code": ...}`` object on stdout). Tracebacks are shown only with ``--debug``; local
variables are never printed (they may hold patient data). ``-q`` leaves only errors on stderr.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..errors import MedsoftError, PartialFailure

# Set per invocation by the root callback (debug, quiet, threads) and RootGroup.main (json).
STATE: dict[str, Any] = {"debug": bool(os.environ.get("MEDSOFT_AUG_DEBUG")), "quiet": False, "json": False,
                         "threads": None}


def err_console() -> Console:
    # Created on demand so that CliRunner's captured stderr is used in tests.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    """Console on stdout, for human-readable results (tables)."""
    return Console(highlight=False, soft_wrap=True)


def setup_logging(debug: bool, quiet: bool = False) -> None:
    """Logs of the package go to stderr: DEBUG with --debug, only errors with -q, else INFO."""
    root = logging.getLogger("medsoft_aug")
    root.handlers.clear()
    handler = RichHandler(console=err_console(), show_time=False, show_path=False, markup=False,
                          rich_tracebacks=False)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    root.propagate = False


def print_json(obj: Any) -> None:
    from ..fsutil import _json_default         # numpy: not imported for --help

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    # One line: collapse newlines so scripts can grep it.
    sys.stderr.write("Error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    return dict(result) if isinstance(result, dict) else {"result": result}


def fail(message: str, exit_code: int, result: Any = None, failures: Optional[list] = None) -> typer.Exit:
    """Report a failure: the ``Error:`` line on stderr and, under ``--json``, one JSON object on stdout (the
    partial result, if any, with ``error`` and ``exit_code`` added). Returns the ``typer.Exit`` to raise."""
    error_line(message)
    if STATE["json"]:
        doc = _as_dict(result)
        if failures is not None and "failures" not in doc:
            doc["failures"] = [{"sample_id": f.sample_id, "problem": f.problem} for f in failures]
        doc.update(error=" ".join(str(message).split()), exit_code=exit_code)
        print_json(doc)
    return typer.Exit(exit_code)


def guarded(fn: Callable) -> Callable:
    """Decorator for every command: MedsoftError -> `Error: ...` + exit code; unexpected -> exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except PartialFailure as e:
            if STATE["debug"]:
                traceback.print_exc(file=sys.stderr)
            for f in e.failures:
                sys.stderr.write(f"  failed: {' '.join(str(f).split())}\n")
            raise fail(str(e), e.exit_code, e.result, e.failures)
        except MedsoftError as e:
            if STATE["debug"]:
                traceback.print_exc(file=sys.stderr)
            raise fail(str(e), e.exit_code)
        except BrokenPipeError:
            # The reader of stdout went away (`... | head`): stop quietly like a tool killed by SIGPIPE.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141)
        except KeyboardInterrupt:
            raise fail("interrupted; rerun the same command to resume", 130)
        except OSError as e:
            if e.errno not in SYSTEM_ERRNOS:
                raise _unexpected(e) from None
            if STATE["debug"]:
                traceback.print_exc(file=sys.stderr)
            where = f" ({e.filename})" if e.filename else ""
            raise fail(f"system error: {e.strerror}{where}; fix it (free space, permissions) and rerun the same "
                       "command to resume", 5)
        except Exception as e:  # noqa: BLE001 - the CLI edge is the one place that catches everything
            raise _unexpected(e) from None

    return wrapper


# The machine's, not the data's nor a bug: out of space or quota, read-only or forbidden output, too many open
# files, a device I/O error (exit 5; the outputs are atomic, so the same command resumes once it is fixed).
SYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE,
                           errno.ENFILE, errno.EIO})


def _unexpected(e: BaseException) -> typer.Exit:
    """Anything else: a bug (exit 1), one line, the traceback only with --debug."""
    if STATE["debug"]:
        traceback.print_exception(e, file=sys.stderr)
    return fail(f"unexpected failure ({type(e).__name__}): {e}. Rerun with --debug for a traceback", 1)


@contextlib.contextmanager
def torch_threads(default: Optional[int] = None) -> Iterator[Optional[int]]:
    """Apply the global ``--threads N`` (unset: ``default``; 0 or None: torch's choice) to torch for the duration
    of a command, restoring the previous value after (CliRunner runs many commands in one process)."""
    n = default if STATE["threads"] is None else STATE["threads"]
    if not n:
        yield None
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


@contextlib.contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield an ``on_progress(stage, done, total)`` callback: rich progress bars with ETA on a terminal, plain
    ``stage: done/total (pct), elapsed, ETA`` lines on stderr otherwise (pipelines, CI: at most one per 10% of
    the stage and at its end). Nothing with ``-q``."""
    if not enabled or STATE["quiet"]:
        yield lambda stage, done, total: None
        return
    console = err_console()
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
                    disable=not console.is_terminal)
    tasks: dict[str, Any] = {}
    started: dict[str, float] = {}
    last_line: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = prog.add_task(stage, total=total or None)
            started[stage] = time.monotonic()
        prog.update(tasks[stage], completed=done, total=total or None)
        if not console.is_terminal:
            step = max(1, (total or 1) // 10)
            if done == total or done - last_line.get(stage, -step) >= step:
                last_line[stage] = done
                sys.stderr.write(_plain_line(stage, done, total, time.monotonic() - started[stage]) + "\n")
                sys.stderr.flush()

    with prog:
        yield on_progress


def _plain_line(stage: str, done: int, total: int, elapsed: float) -> str:
    if not total:
        return f"{stage}: {done}/?, {_duration(elapsed)}"
    line = f"{stage}: {done}/{total} ({100 * done // total}%), {_duration(elapsed)}"
    if 0 < done < total:
        line += f", ETA {_duration(elapsed * (total - done) / done)}"
    return line
