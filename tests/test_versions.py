"""One collector of package versions: every stage record, MODEL_DIR and `info` report the same list."""
from __future__ import annotations

from medsoft_aug import __version__
from medsoft_aug.api import environment_info
from medsoft_aug.versions import DISTRIBUTIONS, package_versions


def test_package_versions_lists_every_distribution():
    v = package_versions()
    assert v["medsoft_aug"] == __version__
    assert set(v) == {"medsoft_aug", *DISTRIBUTIONS}
    assert v["numpy"] and v["torch"] and v["pandas"]          # installed in every environment the suite runs in


def test_environment_info_uses_the_collector():
    info = environment_info()
    assert {k: info[k] for k in package_versions()} == package_versions()


def test_no_second_collector_in_the_package():
    """Only medsoft_aug/versions.py reads distribution metadata."""
    from pathlib import Path

    import medsoft_aug

    root = Path(medsoft_aug.__file__).parent
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if "metadata.version(" in p.read_text(encoding="utf-8"))
    assert readers == ["versions.py"], readers
