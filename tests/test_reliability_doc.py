"""Every test docs/reliability.md names exists: the fault matrix cannot point at nothing."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOC = (ROOT / "docs" / "reliability.md").read_text()


def test_every_named_test_exists():
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", DOC)
    assert len(named) >= 20
    for path, test in named:
        source = (ROOT / path).read_text()
        if test:
            assert re.search(rf"^def {test}\(", source, re.M), f"{path}::{test} is missing"


def test_every_row_names_a_test():
    rows = [line for line in DOC.splitlines() if line.startswith("| ") and "---" not in line]
    for row in rows[1:]:  # the header aside
        assert "`tests/" in row, row
