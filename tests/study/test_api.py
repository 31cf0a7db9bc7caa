"""The commands: every console script is its `python -m` program, with --version; and
`import study` is light (the Python API's run is tested with the example,
tests/test_examples.py)."""

import importlib
import shutil
import subprocess
import sys
from importlib import metadata
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
    "hep2-export": "study.results.export",
    "hep2-results": "study.results",
}


def _run_all(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """The commands run at once; each one's CompletedProcess."""
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    done = []
    for command, process in zip(commands, running, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


def test_each_command_is_its_python_m_programs_main_with_a_version(capsys):
    scripts = {ep.name: ep for ep in metadata.entry_points(group="console_scripts")}
    mains = {
        "study.stats": "study.stats.cli",
        "study.report": "study.report.document",
        "study.results": "study.results.rebuild",
        "mtl.data": "mtl.data.__main__",
    }
    for script, module in COMMANDS.items():
        main = importlib.import_module(mains.get(module, module)).main
        assert scripts[script].load() is main, script
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0
        assert f"python -m {module} (hep2-mtl {package_version()})" in capsys.readouterr().out


@pytest.mark.slow  # three processes importing torch and Ray
def test_hep2_study_prints_what_python_m_study_run_prints():
    installed = shutil.which("hep2-study", path=str(Path(sys.executable).parent))
    assert installed, "hep2-study is not installed (pip install -e .)"
    # The three at once: each is mostly the import of torch and Ray.
    as_script, as_module, version = _run_all(
        [installed, "--help"],
        [sys.executable, "-m", "study.run", "--help"],
        [installed, "--version"],
    )
    assert as_script.returncode == as_module.returncode == 0
    assert as_script.stdout == as_module.stdout
    assert version.returncode == 0 and f"hep2-mtl {package_version()}" in version.stdout


def test_import_study_starts_nothing_heavy():
    code = "import sys, study; print('torch' in sys.modules, 'ray' in sys.modules)"
    (done,) = _run_all([sys.executable, "-c", code])
    assert done.stdout.split() == ["False", "False"]
    assert {"run_preset", "load", "tables", "StudyConfig", "PRESETS"} <= set(dir(study))
