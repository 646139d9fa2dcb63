"""Library warnings raised while reading headers, reported without the values they quote.

pydicom validates header values lazily, when an element is first accessed, and says what it found:
``Invalid value for VR CS: 'SMITH^JOHN'`` goes both to :mod:`warnings` and to the ``pydicom`` logger (which,
with no handler configured, Python prints to stderr). A header value is patient data, so nothing of such a
message may reach a log, a warning or an error. :func:`header_warnings` wraps a read (and every access to the
dataset it returns that happens inside the block): it records the library's warnings and log records instead of
letting them through (ITK's C++ warnings, printed straight to stderr, are switched off meanwhile), and logs one
line per read naming the file and, for each warning, a *kind* taken from a fixed vocabulary (:data:`KINDS`),
never from the message text; a message matching no kind is counted as "other".
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections import Counter
from typing import Iterator

log = logging.getLogger("medsoft_aug.io")

#: the loggers of the libraries whose header-reading messages may quote values
LIBRARY_LOGGERS = ("pydicom", "highdicom")
_VRS = frozenset("AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
                 "UT UV".split())
#: (pattern on the library's message, fixed description); ``{vr}`` is filled from group 1 only when it is a VR
KINDS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p, re.IGNORECASE), k) for p, k in (
    (r"^Invalid value for VR ([A-Z]{2})\b", "invalid value for VR {vr}"),
    (r"exceeds the maximum length of \d+ allowed for VR ([A-Z]{2})\b", "value too long for VR {vr}"),
    (r"\bVR Person Name\b", "invalid person name (PN)"),
    (r"encoding|decode byte string|code extension", "unknown or undecodable character set"),
    (r"'Number of Frames'", "invalid Number of Frames"),
    (r"'Photometric Interpretation'", "inconsistent Photometric Interpretation"),
    (r"'Bits Stored'", "inconsistent Bits Stored"),
    (r"pixel data|padding byte|Extended Offset Table", "pixel data length or padding"),
    (r"setting VR to 'UN'|VR for reading|explicit VR|implicit VR", "unexpected or unknown VR"),
    (r"doesn't allow a value of", "invalid date or time"),
))


def kind_of(message: str) -> str:
    """The fixed description of a library message (never any part of the message itself)."""
    for pattern, kind in KINDS:
        m = pattern.search(message)
        if m:
            vr = m.group(1).upper() if m.groups() else ""
            return kind.format(vr=vr if vr in _VRS else "?")
    return "other"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.kinds: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:   # the record is dropped; only its kind is kept
        if record.levelno >= logging.WARNING:
            try:
                self.kinds[kind_of(record.getMessage())] += 1
            except Exception:  # noqa: BLE001 - a malformed record must not break reading
                self.kinds["other"] += 1


def _itk_warnings_off():
    """ITK (SimpleITK's GDCM fallback) prints its warnings from C++ straight to stderr: off inside the block when
    SimpleITK is in use; returns (module, previous setting) or None."""
    sitk = sys.modules.get("SimpleITK")
    if sitk is None:
        return None
    previous = bool(sitk.ProcessObject.GetGlobalWarningDisplay())
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk, previous


@contextlib.contextmanager
def header_warnings(name: str) -> Iterator[Counter]:
    """Capture library warnings and log records inside the block; log them once, by kind, without values.

    Args:
        name: what is being read, as the user named it (a file or folder name), for the report line.

    Yields:
        A Counter kind -> count, filled when the block ends (also on error).
    """
    handler = _Collect()
    saved = []
    for lname in LIBRARY_LOGGERS:
        lg = logging.getLogger(lname)
        saved.append((lg, lg.propagate, lg.handlers[:]))
        lg.handlers = [handler]
        lg.propagate = False
    kinds: Counter = Counter()
    itk = _itk_warnings_off()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield kinds
            finally:
                # pydicom sends each message both to its logger and to warnings: per kind, the larger count
                warned = Counter(kind_of(str(w.message)) for w in caught)
                for k in set(warned) | set(handler.kinds):
                    kinds[k] = max(warned[k], handler.kinds[k])
    finally:
        for lg, propagate, handlers in saved:
            lg.handlers, lg.propagate = handlers, propagate
        if itk is not None:
            itk[0].ProcessObject.SetGlobalWarningDisplay(itk[1])
        if kinds:
            what = ", ".join(f"{k} (x{n})" if n > 1 else k for k, n in sorted(kinds.items()))
            log.warning("%s: %d header warning(s) while reading, values withheld: %s", name,
                        sum(kinds.values()), what)
