"""The bench scripts keep working: each runs at tiny sizes and its JSON has every field."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from mtl.balancing import BALANCERS

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def run_bench(monkeypatch, tmp_path):
    def run(script: str, *args: str) -> dict:
        out = tmp_path / "out.json"
        monkeypatch.setattr(sys, "argv", [script, *args, "--json", str(out)])
        runpy.run_path(str(BENCH / script), run_name="__main__")
        return json.loads(out.read_text())

    return run


def test_balancer_cost(run_bench):
    result = run_bench("balancer_cost.py", "--models", "tiny", "--steps", "1")
    tiny = result["models"]["tiny"]
    assert set(tiny["ratio_to_equal"]) == set(BALANCERS)
    assert tiny["ratio_to_equal"]["equal"] == 1.0
    assert all(seconds > 0 for seconds in tiny["seconds_per_step"].values())
    assert {"encoder", "image_size", "batch", "steps"} <= set(tiny)


def test_dataloader(run_bench):
    result = run_bench("dataloader.py", "--size", "64", "--patients", "2", "--epochs", "1")
    speeds = result["patches_per_second_per_worker"]
    assert set(speeds) == {"store", "store + basic augmentation", "PNG decoding"}
    assert all(s > 0 for s in speeds.values())
    assert result["ratio_to_png"]["PNG decoding"] == 1.0
    assert result["patches"] == 30


def test_harness_overhead(run_bench):
    result = run_bench(
        "harness_overhead.py",
        "--patients",
        "10",
        "--epochs",
        "1",
        "--encoder",
        "tu-mobilenetv3_small_050",
    )
    assert result["ratio"] > 0 and result["bare_seconds_per_epoch"] > 0
    assert {"engine_seconds_per_epoch", "train_patches", "val_patches", "encoder"} <= set(result)
