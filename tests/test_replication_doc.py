"""docs/replication.md is generated from the saved JSON reports, never edited by hand: regenerating it matches."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "replication.md"
REPORTS = ROOT / "docs" / "replication"

pytest.importorskip("matplotlib")


def test_replication_page_regenerates_from_its_json_reports(tmp_path):
    out = tmp_path / "replication.md"
    result = subprocess.run(
        [sys.executable, "examples/replicate_paper.py", "--from-json", "--out-dir", str(REPORTS), "--doc", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == DOC.read_text(), "docs/replication.md differs from what its script generates"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", DOC.read_text())
    assert len(images) >= 3 * 4  # three figures for each of at least four models
    for image in images:
        assert (DOC.parent / image).is_file(), image
        assert (tmp_path / image).is_file(), image
