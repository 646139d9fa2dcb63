import json

from typer.testing import CliRunner

from medsoft_aug import __version__
from medsoft_aug.cli.app import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"medsoft-aug {__version__}"


def test_info_json_is_one_document():
    r = runner.invoke(app, ["info", "--json"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["medsoft_aug"] == __version__
    assert isinstance(data["cuda_available"], bool)
    assert data["torch"]


def test_every_command_has_help():
    """Like sqlite-utils' test_docs: every command and option carries help text."""
    import click
    import typer.main

    cmd = typer.main.get_command(app)

    def walk(c, path):
        yield path, c
        if isinstance(c, click.Group):
            for name, sub in c.commands.items():
                yield from walk(sub, path + [name])

    for path, c in walk(cmd, []):
        if path:
            assert (c.help or c.short_help), f"command {' '.join(path)} has no help"
        for p in c.params:
            if isinstance(p, click.Option) and p.name not in ("help",):
                assert p.help, f"option {p.name} of {' '.join(path) or 'root'} has no help"
        r = runner.invoke(app, path + ["--help"])
        assert r.exit_code == 0, (path, r.stdout)


def test_unknown_command_is_usage_error():
    r = runner.invoke(app, ["no-such-command"])
    assert r.exit_code == 2
