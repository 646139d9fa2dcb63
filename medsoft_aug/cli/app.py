"""Root of the ``medsoft-aug`` command line: a thin shim over :mod:`medsoft_aug.api`.

Conventions (README "Command-line conventions"): results on stdout (``--json``: one JSON document, also for a
failure: ``{"error": ..., "exit_code": ...}``); logs and progress on stderr; ``-q`` leaves only errors. The
global options ``-q``, ``--debug`` and ``--threads N`` may be given before or after the subcommand.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import PurePath
from typing import Annotated, Any, Optional, Sequence, get_args, get_origin

import typer
from typer.core import TyperGroup

from .. import __version__
from . import output

# Global options accepted anywhere on the command line (moved in front of the subcommand before parsing).
_GLOBAL_FLAGS = ("-q", "--quiet", "--debug")
_GLOBAL_VALUED = ("--threads",)


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Move ``-q``, ``--quiet``, ``--debug`` and ``--threads N`` (or ``--threads=N``) found after the subcommand
    to the front, so that they apply whatever their position; nothing after ``--`` is touched."""
    front: list[str] = []
    rest: list[str] = []
    it = iter(enumerate(args))
    for i, a in it:
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _GLOBAL_FLAGS or any(a.startswith(v + "=") for v in _GLOBAL_VALUED):
            front.append(a)
        elif a in _GLOBAL_VALUED and i + 1 < len(args):
            front.extend([a, args[i + 1]])
            next(it)
        else:
            rest.append(a)
    return front + rest


# Deprecated option spellings of a positional argument: (command path, option names) -> moved to the argument.
_DEPRECATED_POSITIONAL = {("evaluate", "quality"): ("--work", "-w")}


def move_deprecated_options(args: Sequence[str]) -> list[str]:
    """``evaluate quality --work WORK ...`` (the old spelling) -> ``evaluate quality WORK ...``."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    for path, names in _DEPRECATED_POSITIONAL.items():
        at = next((i for i in range(end - len(path) + 1) if tuple(args[i:i + len(path)]) == path), None)
        if at is None:
            continue
        for i in range(at + len(path), end):
            a = args[i]
            if a in names and i + 1 < end:
                val, drop = args[i + 1], 2
            elif any(a.startswith(n + "=") for n in names):
                val, drop = a.split("=", 1)[1], 1
            else:
                continue
            logging.getLogger("medsoft_aug").warning("%s is deprecated: give WORK as the first argument", a)
            del args[i:i + drop]
            args.insert(at + len(path), val)
            break
    return args


def _json_requested(args: Sequence[str]) -> bool:
    return "--json" in (args[:list(args).index("--")] if "--" in args else args)


def _placeholders(cmd: Any) -> None:
    """Help shows WORK / PATH / TEXT / N / FLOAT instead of Typer's ``{work}``, ``<str>`` and ``<bool>``; choices
    stay listed (``a|b|c``); an explicit ``metavar`` wins. Typer >= 0.2x renders an argument's usage name and type
    column, and the help option, through methods of each object, so those are replaced on the instances."""
    for p in cmd.params:
        if p.param_type_name == "argument":
            _plain_argument(p)
        elif p.metavar is None:
            if getattr(p, "is_flag", False):
                p.metavar = ""
            elif not _is_choice(p):
                p.metavar = _type_word(_annotation(p))
    original = cmd.get_help_option

    def get_help_option(ctx: Any) -> Any:
        opt = original(ctx)
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = get_help_option
    for sub in getattr(cmd, "commands", {}).values():
        _placeholders(sub)


def _plain_argument(p: Any) -> None:
    if p.metavar is None:
        p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
    if hasattr(p, "_usage_display_name"):              # Typer >= 0.2x: "{work}" / "[work]" in the usage line
        name = p.metavar
        p._usage_display_name = lambda: name if p.required else f"[{name}]"
    if hasattr(p, "display_type_rich"):                 # and "<path>" beside the name: the help text says it
        p.display_type_rich = lambda ctx: None


def _is_choice(p: Any) -> bool:
    desc = getattr(p, "type_descriptor", None)          # Typer >= 0.2x keeps the annotation, not a click type
    return desc.is_choice if desc is not None else type(p.type).__name__ == "Choice"


def _annotation(p: Any) -> Any:
    desc = getattr(p, "type_descriptor", None)
    return desc.annotation if desc is not None else p.type


def _type_word(t: Any) -> str:
    """PATH, N, FLOAT or TEXT for an annotation (list[X]: X's; tuple[X, Y]: "X Y") or a click type."""
    origin, args = get_origin(t), get_args(t)
    if origin is list and args:
        return _type_word(args[0])
    if origin is tuple and args:
        return " ".join(_type_word(a) for a in args)
    if hasattr(t, "types"):                              # click.Tuple
        return " ".join(_type_word(x) for x in t.types)
    name = t.__name__ if isinstance(t, type) else str(getattr(t, "name", ""))
    if isinstance(t, type) and issubclass(t, PurePath) or name == "path":
        return "PATH"
    if name in ("int", "integer", "integer range"):
        return "N"
    if name in ("float", "float range"):
        return "FLOAT"
    return "TEXT"


# Usage errors raised while parsing: Typer >= 0.2x vendors click and raises its own classes.
_PARSE_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in (getattr(typer, "TyperException", None), getattr(sys.modules.get("click"), "ClickException", None))
    if c is not None)


class RootGroup(TyperGroup):
    """Typer's group plus the shared conventions: global options anywhere, JSON usage errors under --json."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _placeholders(self)

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        args = move_deprecated_options(hoist_global_options(list(sys.argv[1:] if args is None else args)))
        output.STATE["json"] = _json_requested(args)
        if not output.STATE["json"]:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _PARSE_ERRORS as e:          # usage errors (exit 2) never reach the commands' `guarded`
            e.show()
            output.print_json({"error": e.format_message(), "exit_code": e.exit_code})
            if not standalone_mode:
                raise
            sys.exit(e.exit_code)
        except typer.Abort:
            output.error_line("aborted")
            output.print_json({"error": "aborted", "exit_code": 1})
            if not standalone_mode:
                raise
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="medsoft-aug",
    cls=RootGroup,
    help="Balance vertebral-disease imaging datasets by inpainting lesions into normal images "
    "(MedSoft-Diffusion: soft masks + BiomedCLIP-guided Stable Diffusion).",
    epilog="Global options (-q, --debug, --threads) may also follow the subcommand. Results go to stdout, logs "
    "and progress to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medsoft-aug {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors, and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr: no progress, no info "
                                        "logs (results still go to stdout).")] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=0, help="torch CPU threads for train, balance, evaluate and demo (0: torch's default, "
        "one per core; default: that, except demo: 1). Use 1 when other jobs share the CPU: several threads then run far "
        "slower than one.")] = None,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """medsoft-aug: ingest -> masks build -> train -> balance -> evaluate (or `demo` for all of it)."""
    output.STATE["debug"] = debug or bool(os.environ.get("MEDSOFT_AUG_DEBUG"))
    output.STATE["quiet"] = quiet
    output.STATE["threads"] = threads
    output.setup_logging(output.STATE["debug"], quiet)


def _register() -> None:
    from . import (balance_cmd, demo_cmd, evaluate_cmd, info_cmd, ingest_cmd, manifest_cmd, masks_cmd,
                   train_cmd)

    for mod in (info_cmd, ingest_cmd, masks_cmd, train_cmd, balance_cmd, manifest_cmd, evaluate_cmd, demo_cmd):
        mod.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
