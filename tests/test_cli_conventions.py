"""The CLI's shell conventions (README "Command-line conventions"): choices listed in --help, plain placeholders,
global options before or after the subcommand, -q leaves only errors, JSON error objects under --json."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from _masks_helpers import make_work, phantom_seg
from medsoft_aug.cli import output
from medsoft_aug.cli.app import app, hoist_global_options, move_deprecated_options
from medsoft_aug.cli.options import parse_numbering
from medsoft_aug.errors import MedsoftError

runner = CliRunner()

COMMANDS = [[], ["info"], ["ingest"], ["masks", "build"], ["train"], ["balance"], ["demo"], ["manifest", "merge"],
            ["evaluate", "quality"], ["evaluate", "classify"], ["evaluate", "report"]]


def _help(path: list[str]) -> str:
    r = runner.invoke(app, path + ["--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, (path, r.stdout)
    return r.stdout


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_help_has_no_typer_placeholders(path):
    text = _help(path)
    for bad in ("<bool>", "<str>", "<path>", "<int>", "<float>", "{work}", "{WORK}", "{manifests}"):
        assert bad not in text, (path, bad)


def test_help_lists_choices_and_marks_required():
    assert "png|nifti|dicom" in _help(["balance"]) and "masked|donor" in _help(["balance"])
    assert "auto|descriptions|file" in _help(["balance"])
    build = _help(["masks", "build"])
    assert "auto|seg|coords" in build and "auto|verse|totalseg|totalseg-mr" in build
    train = _help(["train"])
    for choices in ("all|msc|smis", "soft|hard", "none|full", "no|fp16|bf16", "auto|cpu"):
        assert choices in train, choices
    assert "generic|rsna2024" in _help(["ingest"])
    quality = _help(["evaluate", "quality"])
    assert "quality [OPTIONS] WORK" in quality and "[required]" in quality and "--work" not in quality


@pytest.mark.parametrize("path", [p for p in COMMANDS if p not in ([], ["info"], ["masks", "build"])],
                         ids=lambda p: " ".join(p))
def test_every_command_with_an_output_takes_o(path):
    text = _help(path)
    assert "--out" in text and " -o " in text, path


def test_global_options_are_moved_in_front_of_the_subcommand():
    assert hoist_global_options(["balance", "W", "-q", "--threads", "1", "--debug", "--json"]) == \
        ["-q", "--threads", "1", "--debug", "balance", "W", "--json"]
    assert hoist_global_options(["train", "W", "--threads=2"]) == ["--threads=2", "train", "W"]
    assert hoist_global_options(["x", "--", "-q"]) == ["x", "--", "-q"]                 # after --: untouched
    assert move_deprecated_options(["evaluate", "quality", "--model", "M", "--work", "W"]) == \
        ["evaluate", "quality", "W", "--model", "M"]
    assert move_deprecated_options(["-q", "evaluate", "quality", "-w=W"]) == ["-q", "evaluate", "quality", "W"]


def _seg_work(tmp_path):
    return make_work(tmp_path / "w", [dict(sample_id=f"s{i}", seg=phantom_seg(), level="L3") for i in range(2)])


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_leaves_only_results_and_errors(tmp_path, where):
    work = _seg_work(tmp_path)
    args = ["masks", "build", str(work)]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0 and "INFO" in loud.stderr and "2 ok" in loud.stderr   # the INFO log line
    quiet = runner.invoke(app, (["-q"] + args) if where == "before" else (args + ["-q", "--force"]))
    assert quiet.exit_code == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.startswith("masks: 2 ok")
    bad = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere"), "-q"])
    assert bad.exit_code == 3 and bad.stderr.startswith("Error: ")  # errors stay


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setitem(output.STATE, "debug", False)
    r = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere"), "--debug"])
    assert r.exit_code == 3 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error:")
    r = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere")])
    assert r.exit_code == 3 and "Traceback" not in r.stderr           # not sticky


def test_json_errors_are_one_json_object(tmp_path):
    r = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere"), "--json"])
    assert r.exit_code == 3
    assert json.loads(r.stdout) == {"error": r.stderr.strip()[len("Error: "):], "exit_code": 3}
    r = runner.invoke(app, ["balance", str(tmp_path), "--output-format", "jpeg", "--json"])   # usage error
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["exit_code"] == 2 and "jpeg" in doc["error"]
    r = runner.invoke(app, ["masks", "build", str(tmp_path / "nowhere")])                     # no --json
    assert r.exit_code == 3 and r.stdout == ""


def test_numbering_accepts_totalsegmentator_task_names(tmp_path):
    # TotalSegmentator `total` numbering: L1 = 31 ... L5 = 27
    work = make_work(tmp_path / "w", [dict(sample_id="t", seg=phantom_seg(labels=(31, 30, 29, 28, 27),
                                                                          disc_offset=None), level="L3")])
    r = runner.invoke(app, ["masks", "build", str(work), "--numbering", "total", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["options"]["numbering"] == "totalseg"
    assert parse_numbering("total_mr") == "totalseg-mr" and parse_numbering("TotalSeg-MR") == "totalseg-mr"
    r = runner.invoke(app, ["masks", "build", str(work), "--numbering", "nnunet"])
    assert r.exit_code == 2 and "total_mr" in r.stderr


def test_threads_apply_to_torch_and_are_restored(monkeypatch):
    before = torch.get_num_threads()
    seen = {}

    def fake_environment_info():       # the shim under test is torch_threads; any command body would do
        with output.torch_threads():
            seen["n"] = torch.get_num_threads()
        return {"ok": True}

    monkeypatch.setattr("medsoft_aug.api.environment_info", fake_environment_info)
    r = runner.invoke(app, ["info", "--json", "--threads", "1"])
    assert r.exit_code == 0, r.stderr
    assert seen["n"] == 1 and torch.get_num_threads() == before


def test_demo_options_reach_the_api(monkeypatch, tmp_path):
    """`demo --max-steps` (and its old name --train-steps) and the global --threads (demo's default 1)."""
    calls = []

    def fake_demo(out, **kw):
        calls.append(kw)
        raise MedsoftError("stop here")

    monkeypatch.setattr("medsoft_aug.demo.demo", fake_demo)
    for args in (["demo", "-o", str(tmp_path), "--max-steps", "7"], ["demo", "--train-steps", "5", "--threads", "2"],
                 ["--threads", "0", "demo"]):
        assert runner.invoke(app, args).exit_code == 1
    assert [(c["train_steps"], c["threads"]) for c in calls] == [(7, 1), (5, 2), (300, None)]


def test_plain_progress_lines_have_eta():
    assert output._plain_line("balance", 10, 40, 30.0) == "balance: 10/40 (25%), 30 s, ETA 1 min 30 s"
    assert output._plain_line("balance", 40, 40, 125.0) == "balance: 40/40 (100%), 2 min 05 s"
    assert output._plain_line("ingest", 3, 0, 1.0) == "ingest: 3/?, 1 s"


def test_balance_reports_every_denoising_step(tmp_path, tiny_model_dir):
    """Progress within a batch: one plain line per 10% of all DDIM steps of the run (stderr is not a terminal
    here), with an ETA; the result line on stdout."""
    from _balance_helpers import one_thread, write_work

    work = write_work(tmp_path / "work", {"normal": 3, "benign": 1})
    with one_thread():
        r = runner.invoke(app, ["balance", str(work), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"),
                                "--steps", "10", "--batch-size", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("balance: denoising steps: ")]
    done = [int(ln.split(": ")[2].split("/")[0]) for ln in steps]
    assert done == sorted(done) and done[-1] == 10 and len(done) >= 5        # 1 batch of 2 samples x 10 steps
    assert all("ETA" in ln for ln in steps if "(100%)" not in ln)
    assert r.stdout.startswith("balance: 2 generated")
    q = runner.invoke(app, ["-q", "balance", str(work), "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"),
                            "--steps", "10", "--batch-size", "2", "--device", "cpu"])
    assert q.exit_code == 0 and q.stderr == "" and "already done" in q.stdout


def test_quality_text_formats_numbers():
    from pathlib import Path

    from medsoft_aug.cli.evaluate_cmd import quality_text

    s = {"n_samples": 19, "steps": 50, "guidance": 7.5, "seed": 0,
         "psnr": {"mean": 31.912345678, "std": 1.2345678}, "psnr_mask": {"mean": 16.04, "std": 2.0},
         "ssim": {"mean": 0.9761234, "std": 0.01}, "ssim_mask": {"mean": None, "std": None}, "n_identical": 0,
         "fid": 12.3456789, "fid_features": "tiny_encoder", "fid_note": "smoke test",
         "background": {"n": 87, "n_identical_outside_mask": 87, "psnr_outside_strict_db": "inf",
                        "max_abs_diff_outside_strict": 0.0}}
    text = quality_text(s, Path("Q"))
    assert "PSNR (whole image)   31.91 ± 1.23 dB" in text and "SSIM (whole image)   0.976 ± 0.010" in text
    assert "SSIM (inside mask)   n/a" in text and "FID                  12.35 (tiny_encoder features)" in text
    assert "psnr_outside_strict_db inf" in text and "max_abs_diff_outside_strict 0.000" in text
    assert "31.912345678" not in text and "12.3456789" not in text


@pytest.mark.parametrize("err, code, line", [
    (OSError(28, "No space left on device", "/out/synthetic/x.png"), 5,
     "Error: system error: No space left on device (/out/synthetic/x.png); fix it (free space, permissions) and "
     "rerun the same command to resume"),
    (PermissionError(13, "Permission denied"), 5,
     "Error: system error: Permission denied; fix it (free space, permissions) and rerun the same command to resume"),
    (FileNotFoundError(2, "No such file or directory", "x"), 1,
     "Error: unexpected failure (FileNotFoundError): [Errno 2] No such file or directory: 'x'. Rerun with --debug "
     "for a traceback"),
])
def test_system_errors_exit_5_other_os_errors_are_bugs(monkeypatch, tmp_path, err, code, line):
    """The machine's errors (disk full, no permission) are neither bad data (3) nor a bug (1): exit 5, one line,
    and under --json one error object; any other OSError stays an unexpected failure."""
    def fake_demo(out, **kw):
        raise err

    monkeypatch.setattr("medsoft_aug.demo.demo", fake_demo)
    r = runner.invoke(app, ["demo", "-o", str(tmp_path)])
    assert r.exit_code == code and r.stderr.strip().splitlines() == [line] and "Traceback" not in r.stderr
    r = runner.invoke(app, ["demo", "-o", str(tmp_path), "--json"])
    assert r.exit_code == code and json.loads(r.stdout)["exit_code"] == code
