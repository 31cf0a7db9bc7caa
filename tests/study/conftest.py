"""A real smoke study, trained once per session: `python -m study.run --preset smoke` as a
user runs it (main), read by every test that needs a really trained study. A test that
changes it works on a copy (smoke_copy)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SmokeStudy:
    results: Path  # RESULTS: the study in RESULTS/smoke, its synthetic data in RESULTS/data
    printed: str  # what main() printed

    @property
    def folder(self) -> Path:
        return self.results / "smoke"


@pytest.fixture(scope="session")
def smoke_study(ray_local, tmp_path_factory) -> SmokeStudy:
    """RESULTS/smoke: `--preset smoke` run by main() to the end (2 configurations x 5 folds x
    2 epochs, really trained on the CPU). Read only: copy it (smoke_copy) to change it."""
    from study.run import main

    results = tmp_path_factory.mktemp("smoke-results")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the console prints to sys.stdout
        status = main(["--preset", "smoke", "--results", str(results)])
    assert status == 0, printed.getvalue()
    return SmokeStudy(results, printed.getvalue())


@pytest.fixture
def smoke_copy(smoke_study, tmp_path) -> Path:
    """A copy of the session's smoke study and its data, in RESULTS = tmp_path, to change."""
    shutil.copytree(smoke_study.results, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def scripted_cli(monkeypatch):
    """scripted_cli(Trainer): main(), the command line, trains its study's folds with
    Trainer (a scripted stand-in for FoldTrainer), for tests of what the driver does."""
    import study.run

    def use(trainer: type) -> None:
        asked = study.run.request
        monkeypatch.setattr(
            study.run, "request", lambda args: dataclasses.replace(asked(args), trainer=trainer)
        )

    return use
