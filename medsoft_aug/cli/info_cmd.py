"""`medsoft-aug info`: versions and hardware, without needing a GPU."""
from __future__ import annotations

import typer

from .options import JsonOpt
from .output import guarded, print_json


def register(app: typer.Typer) -> None:
    @app.command("info")
    @guarded
    def info(json_out: JsonOpt = False):
        """Show package versions, CUDA availability and devices."""
        from ..api import environment_info

        data = environment_info()
        if json_out:
            print_json(data)
            return
        for k, v in data.items():
            typer.echo(f"{k}: {v}")
