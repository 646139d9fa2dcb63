"""Root of the ``medsoft-aug`` command line: a thin shim over :mod:`medsoft_aug.api`."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .. import __version__
from . import output

app = typer.Typer(
    name="medsoft-aug",
    help="Balance vertebral-disease imaging datasets by inpainting lesions into normal images "
    "(MedSoft-Diffusion: soft masks + BiomedCLIP-guided Stable Diffusion).",
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """medsoft-aug: ingest -> masks build -> train -> balance -> evaluate (or `demo` for all of it)."""
    output.STATE["debug"] = debug or bool(os.environ.get("MEDSOFT_AUG_DEBUG"))
    output.STATE["quiet"] = quiet
    output.setup_logging(output.STATE["debug"])


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
