"""One strict reader for every CSV the project reads (labels CSVs, WORK/index.csv, masks.csv).

A CSV is accepted only when it is UTF-8 text (a BOM is allowed), holds no NUL byte, parses under the ``csv``
module's strict rules, has unique column names and gives every row exactly the header's number of fields. Any
other file is an :class:`~medsoft_aug.errors.InputError` whose message names the file and where the problem
is (line and byte offset), never the cell values (they may hold patient data).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from .errors import InputError

_BOM = b"\xef\xbb\xbf"


def _where(data: bytes, pos: int) -> str:
    """'row R (line L, byte offset P)': rows count from 1 after the header (exact without multi-line cells)."""
    line = data.count(b"\n", 0, pos) + 1
    return f"{'the header' if line == 1 else f'row {line - 1}'} (line {line}, byte offset {pos})"


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text of ``data`` (BOM dropped); InputError naming the first bad byte's line and offset."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise InputError(f"{name}: NUL byte in {_where(data, nul)}; a CSV is text: is this a binary or damaged "
                         "file?")
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        pos = skip + e.start
        raise InputError(f"{name}: not UTF-8 text: byte 0x{data[pos]:02x} in {_where(data, pos)}; save the CSV "
                         "as UTF-8") from None


def _rows(text: str, name: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) with blank lines dropped; InputError for parse errors and rows of the wrong width."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip() and header is not None):
                continue
            if header is None:
                header = [c.strip() for c in row]
                continue
            if len(row) != len(header):
                raise InputError(f"{name} line {reader.line_num}: {len(row)} field(s) where the header has "
                                 f"{len(header)} (a cut or damaged file?)")
            rows.append(row)
    except csv.Error as e:
        raise InputError(f"{name} line {reader.line_num}: cannot be parsed as CSV ({e})") from None
    if header is None or not any(header):
        raise InputError(f"{name} is empty (no header row)")
    seen: set[str] = set()
    for c in header:
        if c in seen:
            raise InputError(f"{name}: column {c!r} appears twice in the header")
        seen.add(c)
    return header, rows


def read_csv_strings(path: str | Path, what: str, *, strip: bool = True) -> pd.DataFrame:
    """Read a CSV as a DataFrame of strings (empty cells are ``""``; ``strip`` trims cells and names).

    Args:
        path: the CSV file (read only).
        what: how messages name it ("labels CSV", "index.csv").

    Raises:
        InputError: missing, unreadable, empty, non-UTF-8, NUL bytes, unbalanced quotes, rows whose number
            of fields differs from the header's, repeated column names.
    """
    path = Path(path)
    name = f"{what} {path.name}" if what != path.name else what
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found") from None
    except OSError as e:  # a folder, a symlink loop, no permission, ...
        why = {40: "symlink loop", 21: "a folder", 13: "permission denied"}.get(e.errno, type(e).__name__)
        raise InputError(f"{what} {path} cannot be read ({why})") from None
    header, rows = _rows(_decode(data, name), name)
    df = pd.DataFrame(rows, columns=header, dtype=object)
    if strip:
        df = df.apply(lambda col: col.str.strip()) if len(df.columns) else df
    return df.astype(str) if len(df) else df
