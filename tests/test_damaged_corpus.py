"""Issue 8 section 2: the CLI walked over a corpus of damaged inputs (tests/_corpus.py, derived from the phantom
sample data): every case ends in exit 3 or 4 with exactly one `Error:` line, no traceback, never exit 1; a
damaged sample is listed as failed and appears in no output. One test, in-process (CliRunner)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app

from _corpus import build_ingest_cases, build_masks_cases

runner = CliRunner()


def _problems(case) -> list[str]:
    r = runner.invoke(app, case.argv)
    out = r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    probs = []
    if r.exit_code not in case.codes:
        probs.append(f"exit {r.exit_code} (want {case.codes})")
    if len(errors) != 1:
        probs.append(f"{len(errors)} Error: lines")
    if "Traceback" in out or "unexpected failure" in out or r.exception is not None and \
            not isinstance(r.exception, SystemExit):
        probs.append("traceback or unexpected failure")
    if case.sample is not None and r.exit_code == 4:
        if not any(ln.strip().startswith(f"failed: {case.sample}:") for ln in r.stderr.splitlines()):
            probs.append("damaged sample not listed as failed")
        written = [f"{d}/{case.sample}.npy" for d in case.outputs if (case.out / d / f"{case.sample}.npy").exists()]
        if written:
            probs.append(f"damaged sample written: {written}")
    return [f"{case.name}: {p} | {' '.join((errors or [r.stderr[-300:]])[0].split())[:300]}" for p in probs]


def test_cli_over_damaged_corpus(tmp_path, sample_data_dir):
    if not (sample_data_dir / "labels.csv").is_file():
        pytest.skip("sample_data/ not generated")
    cases = build_ingest_cases(sample_data_dir, tmp_path / "ingest") + build_masks_cases(tmp_path / "masks")
    assert len(cases) >= 100, len(cases)
    problems = [p for case in cases for p in _problems(case)]
    assert not problems, f"{len(problems)} of {len(cases)} cases misbehave:\n" + "\n".join(problems)
