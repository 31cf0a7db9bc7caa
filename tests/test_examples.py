"""The examples a user copies run: the Python API runs a study, and examples/analyse_study.py
analyses it beside another."""

import subprocess
import sys
from pathlib import Path

import pytest

import study

EXAMPLE = Path(__file__).parent.parent / "examples" / "analyse_study.py"


@pytest.mark.slow  # a small study, and the session's smoke study
def test_the_api_runs_presets_and_the_analysis_example_reads_them(smoke_copy, ray_local):
    # On the session's Ray (the API's "Ray already started" path), left running; beside the
    # session's smoke study (run by the command line), copied to smoke_copy/smoke.
    tmp_path = smoke_copy
    second = study.run_preset(
        "smoke", results=tmp_path, name="gradnorm",
        overrides={"epochs": 1, "balancer": "gradnorm", "decoder_channels": (16, 16, 8, 8, 8)},
    )  # fmt: skip
    assert ray_local.is_initialized()
    assert len(second.trials) == 2 and (second.trials.status == "completed").all()
    assert str(second.trials.epochs_run.dtype) == "Int32"
    assert len(second.epochs) == 2 * 5 * 1 * 2 and second.stats is not None
    assert study.tables(tmp_path / "gradnorm").trials.equals(second.trials)
    assert (second.trials.balancer == "gradnorm").all()
    assert [list(c) for c in second.trials.decoder_channels] == [[16, 16, 8, 8, 8]] * 2

    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    for name in ("smoke", "gradnorm"):
        assert f"study {name}: the score" in out
    assert "cannot be told apart from the best" in out or "worse" in out
    assert "best_score" in out and (tmp_path / "analysis_curves.png").stat().st_size > 10_000
