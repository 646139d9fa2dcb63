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
    import typer.main

    cmd = typer.main.get_command(app)

    def walk(c, path):          # duck-typed: Typer >= 0.2x vendors its own click classes
        yield path, c
        for name, sub in getattr(c, "commands", {}).items():
            yield from walk(sub, path + [name])

    seen = []
    for path, c in walk(cmd, []):
        if path:
            assert (c.help or c.short_help), f"command {' '.join(path)} has no help"
        for p in c.params:
            if p.param_type_name in ("option", "argument") and p.name not in ("help",):
                assert p.help, f"{p.param_type_name} {p.name} of {' '.join(path) or 'root'} has no help"
                seen.append((tuple(path), p.name))
        r = runner.invoke(app, path + ["--help"])
        assert r.exit_code == 0, (path, r.stdout)
    assert (("balance",), "blend") in seen and (("evaluate", "quality"), "work") in seen   # the walk reached them


def test_unknown_command_is_usage_error():
    r = runner.invoke(app, ["no-such-command"])
    assert r.exit_code == 2
