"""The commands: every console script is its `python -m` program, with --version; and
`import study` is light (the Python API's run is tested with the example,
tests/test_examples.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import study
from mtl import package_version

COMMANDS = {
    "hep2-data": "mtl.data",
    "hep2-train": "mtl.train",
    "hep2-predict": "mtl.predict",
    "hep2-study": "study.run",
    "hep2-report": "study.report",
    "hep2-stats": "study.stats",
    "hep2-export": "study.export",
    "hep2-results": "study.results",
}


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # 24 processes, each importing torch or Ray
@pytest.mark.parametrize("script,module", COMMANDS.items())
def test_each_command_is_its_python_m_program(script, module):
    installed = shutil.which(script, path=str(Path(sys.executable).parent))
    assert installed, f"{script} is not installed (pip install -e .)"
    as_script, as_module = _run(installed, "--help"), _run(sys.executable, "-m", module, "--help")
    assert as_script.returncode == as_module.returncode == 0
    assert as_script.stdout == as_module.stdout
    version = _run(installed, "--version")
    assert version.returncode == 0 and f"hep2-mtl {package_version()}" in version.stdout


def test_import_study_starts_nothing_heavy():
    code = "import sys, study; print('torch' in sys.modules, 'ray' in sys.modules)"
    assert _run(sys.executable, "-c", code).stdout.split() == ["False", "False"]
    assert {"run_preset", "load", "tables", "StudyConfig", "PRESETS"} <= set(dir(study))
