"""Ingest decodes only the DICOM slices it uses (io.reader.open_image), with outputs identical to reading and
decoding every volume whole (io.reader.read_image): the committed phantom sample data (DICOM series: native
and RLE, MONOCHROME1, rescale, empty UIDs, right-to-left instance order; NIfTI) in both layouts."""
from __future__ import annotations

import json

import pytest

from medsoft_aug.api import ingest
from medsoft_aug.io import reader


def _outputs(work):
    files = {str(p.relative_to(work)): p.read_bytes() for p in work.rglob("*")
             if p.is_file() and p.suffix in (".csv", ".npy")}
    record = json.loads((work / "ingest.json").read_text())
    return files, {k: record[k] for k in ("n_samples", "counts", "failures", "warnings", "skipped")}


@pytest.mark.parametrize("layout", ["generic", "rsna2024"])
def test_ingest_equals_the_whole_volume_read(tmp_path, sample_data_dir, monkeypatch, layout):
    if not (sample_data_dir / "labels.csv").is_file():
        pytest.skip("sample_data/ not generated")
    if layout == "generic":
        args = (sample_data_dir / "labels.csv", sample_data_dir)
    else:
        args = (sample_data_dir / "rsna2024" / "train.csv", sample_data_dir / "rsna2024" / "images")
    ingest(*args, tmp_path / "lazy", fmt=layout)
    lazy = _outputs(tmp_path / "lazy")
    monkeypatch.setattr(reader, "open_image", reader.read_image)      # every volume decoded whole
    ingest(*args, tmp_path / "whole", fmt=layout)
    whole = _outputs(tmp_path / "whole")
    assert lazy[1] == whole[1]
    assert sorted(lazy[0]) == sorted(whole[0]) and len(lazy[0]) > 20
    assert [k for k in lazy[0] if lazy[0][k] != whole[0][k]] == []
