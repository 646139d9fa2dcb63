"""Labels-CSV layouts: generic parsing rules and the RSNA 2024 CSVs (real copies and synthetic)."""
import csv
from collections import Counter

import numpy as np
import pytest

from medsoft_aug.errors import InputError, UsageError
from medsoft_aug.ingest.generic import parse_generic
from medsoft_aug.ingest.rsna2024 import default_paths, parse_rsna2024, resolve_conditions
from medsoft_aug.ingest.samples import SamplePathError, resolve_under

from _ingest_helpers import write_csv


def test_generic_ids_defaults_and_row_problems(tmp_path):
    rows = [{"image": "a/b/case 1.nii.gz", "label": "normal"},
            {"image": "a/b/case 1.nii.gz", "label": "normal", "slice": "3"},
            {"image": "a/b/case 1.nii.gz", "label": "tumor", "slice": "3"},
            {"image": "c.png", "label": "tumor", "x": "1.5"},
            {"image": "d.png", "label": "", "slice": "2.5"},
            {"image": "c.png", "label": "normal", "sample_id": "c"}]
    specs = parse_generic(write_csv(tmp_path / "l.csv", rows, ["image", "label", "slice", "x", "sample_id"]))
    ids = [s.sample_id for s in specs]
    assert ids == ["a_b_case_1", "a_b_case_1_s3", "a_b_case_1_s3_2", "c_2", "d", "c"]
    assert specs[0].patient_id == specs[0].study_id == "a/b/case 1.nii.gz"
    assert specs[1].slice_index == 3 and specs[0].slice_index is None
    assert specs[3].problem == "give both x and y or neither"
    assert "slice '2.5' is not an integer" in specs[4].problem and "empty label" in specs[4].problem
    assert not specs[0].problem


@pytest.mark.parametrize("rows, cols, message", [
    ([{"image": "a.png"}], ["image"], "missing required column(s): label"),
    ([{"label": "x"}], ["label"], "missing required column(s): image"),
    ([{"image": "a.png", "label": "n", "split": "train"}, {"image": "b.png", "label": "n", "split": "tst"}],
     ["image", "label", "split"], "split 'tst' is not one of"),
    ([{"image": "a.png", "label": "n", "sample_id": "x"}, {"image": "b.png", "label": "n", "sample_id": "X"}],
     ["image", "label", "sample_id"], "sample_id 'X' is repeated"),
    ([{"image": "a.png", "label": "n", "sample_id": "../evil"}], ["image", "label", "sample_id"],
     "is not filesystem-safe"),
])
def test_generic_table_errors(tmp_path, rows, cols, message):
    with pytest.raises(InputError) as e:
        parse_generic(write_csv(tmp_path / "l.csv", rows, cols))
    assert message in str(e.value)


def test_resolve_under_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    assert resolve_under(root, "sub/../sub") == (root / "sub").resolve()
    for bad in ("../outside.png", str(tmp_path / "outside.png"), "link.png", "sub/../../outside.png"):
        with pytest.raises(SamplePathError):
            resolve_under(root, bad)


def _independent_rsna_counts(folder, conditions):
    """Reference built with the csv module only: expected class counts and skipped rows."""
    with open(folder / "train.csv", newline="") as fh:
        train = {r["study_id"]: r for r in csv.DictReader(fh)}
    expected, empty, missing = Counter(), 0, 0
    with open(folder / "train_label_coordinates.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            cond = r["condition"].lower().replace(" ", "_")
            if cond not in conditions:
                continue
            if r["study_id"] not in train:
                missing += 1
                continue
            sev = train[r["study_id"]][f"{cond}_{r['level'].lower().replace('/', '_')}"]
            if sev == "":
                empty += 1
                continue
            expected["normal" if sev == "Normal/Mild" else f"{cond}_{sev.lower()}"] += 1
    return expected, empty, missing


def test_rsna_real_csvs(realdata):
    folder = realdata / "rsna2024_lumbar"
    assert b"\r\n" in (folder / "train.csv").read_bytes()[:2000]  # the CRLF case is really exercised
    inputs = default_paths(folder / "train.csv", None, None)
    specs = parse_rsna2024(inputs)
    conds = ("spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing")
    expected, empty, missing = _independent_rsna_counts(folder, conds)
    assert Counter(s.label for s in specs) == expected
    assert inputs.skipped["empty_severity"] == empty and inputs.skipped["study_not_in_labels"] == missing
    assert len(specs) > 2000 and not any(s.problem for s in specs)
    assert len({s.sample_id for s in specs}) == len(specs)
    s = specs[0]
    assert s.patient_id == s.study_id and s.image == f"{s.study_id}/{s.series_id}/{int(s.instance)}.dcm"
    assert {x.condition for x in specs} == set(conds)
    moderate = next(x for x in specs if x.label.endswith("_moderate"))
    assert moderate.description.startswith("moderate ") and moderate.level in moderate.description
    # --conditions narrows the selection, accepts display names, rejects unknown ones
    scs = parse_rsna2024(default_paths(folder / "train.csv", None, None), conditions=["Spinal Canal Stenosis"])
    assert Counter(x.label for x in scs) == _independent_rsna_counts(folder, ("spinal_canal_stenosis",))[0]
    with pytest.raises(UsageError):
        resolve_conditions(["spinal_stenosis"])


def test_rsna_missing_columns_and_files(tmp_path, realdata):
    folder = realdata / "rsna2024_lumbar"
    write_csv(tmp_path / "coords.csv", [{"study_id": "1", "series_id": "2", "condition": "x"}])
    with pytest.raises(InputError, match="missing required column.*instance_number, level, x, y"):
        parse_rsna2024(default_paths(folder / "train.csv", tmp_path / "coords.csv", None))
    with pytest.raises(InputError, match="series descriptions CSV .* not found"):
        parse_rsna2024(default_paths(folder / "train.csv", None, tmp_path / "nope.csv"))
    write_csv(tmp_path / "train.csv", [{"study_id": "1", "spinal_canal_stenosis_l1_l2": "Severe"}])
    with pytest.raises(InputError, match="missing required column"):
        parse_rsna2024(default_paths(tmp_path / "train.csv", folder / "train_label_coordinates.csv",
                                     folder / "train_series_descriptions.csv"))
