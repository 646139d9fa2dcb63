"""CLI edge: stdout carries results only (``--json`` = one JSON document); progress, logs and errors go to stderr.

``guarded`` turns project exceptions into one ``Error: ...`` line and the documented exit code. Tracebacks are
shown only with ``--debug``; local variables are never printed (they may hold patient data).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import MedsoftError, PartialFailure
from ..fsutil import _json_default

STATE = {"debug": bool(os.environ.get("MEDSOFT_AUG_DEBUG")), "quiet": False}


def err_console() -> Console:
    # Created on demand so that CliRunner's captured stderr is used in tests.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def setup_logging(debug: bool) -> None:
    root = logging.getLogger("medsoft_aug")
    root.handlers.clear()
    handler = RichHandler(console=err_console(), show_time=False, show_path=False, markup=False,
                          rich_tracebacks=False)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    # One line: collapse newlines so scripts can grep it.
    sys.stderr.write("Error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


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
            error_line(str(e))
            raise typer.Exit(e.exit_code)
        except MedsoftError as e:
            if STATE["debug"]:
                traceback.print_exc(file=sys.stderr)
            error_line(str(e))
            raise typer.Exit(e.exit_code)
        except BrokenPipeError:
            # The reader of stdout went away (`... | head`): stop quietly like a tool killed by SIGPIPE.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141)
        except KeyboardInterrupt:
            error_line("interrupted; rerun the same command to resume")
            raise typer.Exit(130)
        except Exception as e:  # noqa: BLE001 - the CLI edge is the one place that catches everything
            if STATE["debug"]:
                traceback.print_exc(file=sys.stderr)
            error_line(f"unexpected failure ({type(e).__name__}): {e}. Rerun with --debug for a traceback")
            raise typer.Exit(1)

    return wrapper


@contextlib.contextmanager
def progress_reporter(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield an ``on_progress(stage, done, total)`` callback rendering rich progress bars on stderr."""
    if not enabled or STATE["quiet"]:
        yield lambda stage, done, total: None
        return
    console = err_console()
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=not console.is_terminal)
    tasks: dict[str, Any] = {}
    last_line: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = prog.add_task(stage, total=total or None)
        prog.update(tasks[stage], completed=done, total=total or None)
        if not console.is_terminal:
            # Non-interactive stderr (pipelines, CI): a plain line at most every 10% and at the end.
            step = max(1, (total or 1) // 10)
            if done == total or done - last_line.get(stage, -step) >= step:
                last_line[stage] = done
                sys.stderr.write(f"{stage}: {done}/{total or '?'}\n")

    with prog:
        yield on_progress
