"""`medsoft-aug manifest merge`: join shard manifests (thin shim over :func:`medsoft_aug.api.merge_manifests`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt
from .output import guarded, print_json

manifest_app = typer.Typer(help="Augmented-dataset manifests (OUT/manifest.csv).", no_args_is_help=True)


@manifest_app.command("merge")
@guarded
def merge(
    manifests: Annotated[list[Path], typer.Argument(help="Manifests to join (e.g. one per --shard K/N output).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Merged manifest path (or a folder: FOLDER/manifest.csv); paths are rebased to it.")],
    json_out: JsonOpt = False,
) -> None:
    """Merge manifests: identical rows kept once (reported as duplicates); differing rows under one id are a
    conflict (exit 3, nothing written)."""
    from ..api import merge_manifests

    res = merge_manifests(manifests, out)
    if json_out:
        print_json(res.to_dict())
        return
    typer.echo(f"merged {len(res.inputs)} manifests: {res.n_rows} rows ({res.n_real} real, {res.n_synthetic} "
               f"synthetic), {len(res.duplicates)} duplicates dropped -> {res.out}")


def register(app: typer.Typer) -> None:
    app.add_typer(manifest_app, name="manifest")
