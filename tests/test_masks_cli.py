"""`medsoft-aug masks build` through CliRunner: exit codes 0/2/3/4, --json, stderr."""
import json

from typer.testing import CliRunner

from _masks_helpers import make_work, phantom_seg
from medsoft_aug.cli.app import app

runner = CliRunner()


def _work(tmp_path, extra=()):
    seg = phantom_seg(shape=(64, 48))
    samples = [dict(sample_id="n1", seg=seg, level="L2", label="normal"),
               dict(sample_id="t1", x=20, y=20, label="tumor", spacing=(0.7, 0.7)), *extra]
    return make_work(tmp_path / "w", samples)


def test_cli_ok_json_and_preview(tmp_path):
    work = _work(tmp_path)
    opts = ["--sigma-mm", "2", "--box-mm", "30"]
    r = runner.invoke(app, ["masks", "build", str(work), "--json", *opts, "--preview", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] == 2 and data["failed"] == 0 and data["options"]["box_mm"] == 30.0
    assert data["preview"].endswith("p.png") and (tmp_path / "p.png").is_file()
    r = runner.invoke(app, ["masks", "build", str(work), *opts])
    assert r.exit_code == 0 and "2 reused" in r.stdout
    r = runner.invoke(app, ["masks", "build", str(work), *opts, "--force"])
    assert r.exit_code == 0 and "2 computed" in r.stdout


def test_cli_partial_failure_exit_4_with_json(tmp_path):
    work = _work(tmp_path, [dict(sample_id="bad", x=999, y=1)])
    r = runner.invoke(app, ["masks", "build", str(work), "--json"])
    assert r.exit_code == 4
    data = json.loads(r.stdout)  # still exactly one JSON document
    assert data["failed"] == 1 and data["failures"][0]["sample_id"] == "bad"
    assert "bad:" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error: 1 of 3")
    assert "Traceback" not in r.stderr


def test_cli_exit_3_and_2(tmp_path):
    r = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere")])
    assert r.exit_code == 3 and "index.csv" in r.stderr and r.stdout == ""
    work = make_work(tmp_path / "w", [dict(sample_id="a")])
    r = runner.invoke(app, ["masks", "build", str(work), "--json"])
    assert r.exit_code == 3 and r.stderr.splitlines()[-1].startswith("Error: no mask")
    doc = json.loads(r.stdout)                       # --json: the failure as one JSON object too
    assert doc["exit_code"] == 3 and doc["error"] == r.stderr.splitlines()[-1][len("Error: "):]
    r = runner.invoke(app, ["masks", "build", str(work), "--numbering", "nnunet"])
    assert r.exit_code == 2 and "--numbering" in r.stderr
    r = runner.invoke(app, ["masks", "build", str(work), "--numbering", "nnunet", "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["exit_code"] == 2   # usage errors too
