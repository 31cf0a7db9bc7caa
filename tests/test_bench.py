"""The bench scripts keep working: each runs at tiny sizes and its JSON has every field.

Each runs as its own process, as a user runs it (some start their own Ray)."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benches, each in its own process

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def run_bench(tmp_path):
    def run(script: str, *args: str) -> dict:
        out = tmp_path / "out.json"
        done = subprocess.run(
            [sys.executable, str(BENCH / script), *args, "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(out.read_text())

    return run


def test_balancer_cost(run_bench):
    # One balancer of each kind of step: GradNorm's extra pass, FAMO's second forward, an
    # aggregation's split forward and Jacobian (all of them: the same script without
    # --balancers).
    asked = ["gradnorm", "famo", "upgrad"]
    result = run_bench("balancer_cost.py", "--models", "tiny", "--steps", "1", "--balancers",
                       *asked)  # fmt: skip
    tiny = result["models"]["tiny"]
    assert list(tiny["ratio_to_equal"]) == ["equal", *asked]
    assert tiny["ratio_to_equal"]["equal"] == 1.0
    assert all(seconds > 0 for seconds in tiny["seconds_per_step"].values())
    assert {"encoder", "image_size", "batch", "steps"} <= set(tiny)
    # On a CPU: the bytes of the tensors a step makes (activations and gradients at least).
    assert list(tiny["peak_mib"]) == ["equal", *asked]
    assert tiny["memory_ratio_to_equal"]["equal"] == 1
    assert all(mib > 1 for mib in tiny["peak_mib"].values())


def test_cpu_step(run_bench):
    result = run_bench(
        "cpu_step.py", "--encoder", "tu-mobilenetv3_small_050", "--threads", "1",
        "--steps", "1", "--warmup", "0",
    )  # fmt: skip
    (variants,) = result["threads"].values()
    assert variants["unfused, NCHW"]["ratio"] == 1.0
    assert len(variants) == 4 and all(v["seconds_per_step"] > 0 for v in variants.values())


def test_dataloader(run_bench):
    result = run_bench("dataloader.py", "--size", "64", "--patients", "2", "--epochs", "1")
    speeds = result["patches_per_second_per_worker"]
    assert set(speeds) == {"store", "store + basic augmentation", "PNG decoding"}
    assert all(s > 0 for s in speeds.values())
    assert result["ratio_to_png"]["PNG decoding"] == 1.0
    assert result["patches"] == 30


def test_harness_overhead(run_bench):
    result = run_bench(
        "harness_overhead.py", "--patients", "10", "--epochs", "1",
        "--encoder", "tu-mobilenetv3_small_050",
    )  # fmt: skip
    assert result["ratio"] > 0 and result["bare_seconds_per_epoch"] > 0
    assert {"engine_seconds_per_epoch", "train_patches", "val_patches", "encoder"} <= set(result)


def test_the_gpu_check_dry_run_on_a_cpu(tmp_path):
    """bash bench/gpu_check.sh --cpu: every step of the GPU check at toy sizes, including
    gpu_throughput.py and the five folds packed on a (declared) GPU."""
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["cpu_dry_run"] and report["machine"]["torch"]
    assert report["tests"]["passed"] and "4 passed, 1 skipped" in report["tests"]["summary"]
    throughput = report["throughput"]
    assert throughput["device"] == "cpu" and throughput["gflop_per_training_patch"] > 0
    (row,) = throughput["variants"]
    assert {"variant", "batch", "patches_per_s", "ratio", "tflops", "peak_gib"} <= set(row)
    assert set(throughput["shared_device"]) == {"1", "2"}
    assert throughput["shared_device"]["1"]["ratio"] == 1.0
    assert report["fold_memory"] == {"rows": [], "note": "not measured: no CUDA on a --cpu dry run"}
    epoch = report["paper_epoch"]
    assert epoch["gpus_per_fold"] == 0.2  # five folds packed on the one GPU
    assert epoch["train_patches"] > 0 and epoch["train_patches_per_s"] > 0
    assert 0 <= epoch["data_wait_share"] < 1
    assert "# GPU check: cpu" in (out / "gpu_check.md").read_text()


def test_study_efficiency(run_bench):
    result = run_bench(
        "study_efficiency.py", "--patients", "10", "--epochs", "2", "--min-epochs", "1",
        "--step", "1", "--alphas", "0.1", "--samples", "2", "--seeds", "1", "--folds", "2",
        "--encoder", "tu-mobilenetv3_small_050",
    )  # fmt: skip
    assert result["grid_configurations"] == 4 and result["grid_work"] == 4 * (1 + 2)
    assert result["target"] == pytest.approx(result["grid_best_score"] - 0.01)
    assert set(result["searches"]) == {"random", "tpe", "tpe + asha", "tpe + asha, rf 3"}
    for search in result["searches"].values():
        fields = {"work_per_seed", "median_work", "ratio_to_grid", "seeds_reaching_target"}
        assert fields | {"total_work_per_seed", "spread"} <= set(search)
        low, high = search["spread"]
        assert low <= search["median_work"] <= high
    correlation = result["rung_rank_correlation"]
    assert math.isnan(correlation) or -1 <= correlation <= 1
    assert 1 <= result["configurations_within_tolerance"] <= 4


def test_study_scale(run_bench):
    result = run_bench("study_scale.py", "--trials", "20", "--epochs", "1")
    assert result["trials"] == result["completed"] == 20 and result["folds"] == 5
    for part in ("s_per_trial", "harness_s", "tune_state_s"):
        assert result[f"first_tenth_{part}"] >= 0 and result[f"last_tenth_{part}"] >= 0
    assert result["first_tenth_s_per_trial"] > 0
    assert result["ratio"] == pytest.approx(
        result["last_tenth_s_per_trial"] / result["first_tenth_s_per_trial"], rel=0.01
    )


def test_suite_cpu(run_bench, tmp_path):
    """The suite profiler on a suite of two tests: one waits, one starts a process that
    burns CPU; both are timed, and the process is counted apart from pytest's."""
    suite = tmp_path / "suite" / "test_two.py"
    suite.parent.mkdir()
    suite.write_text(
        textwrap.dedent("""
            import subprocess, sys, time

            BURN = "import time\\nt = time.process_time()\\n" + (
                "while time.process_time() - t < 0.5: pass"
            )

            def test_waits():
                time.sleep(0.3)

            def test_starts_a_process():
                subprocess.run([sys.executable, "-c", BURN], check=True)
        """)
    )
    result = run_bench("suite_cpu.py", str(suite))
    assert result["pytest_exit"] == 0
    (name,) = result["files"]
    assert name.endswith("test_two.py") and result["files"][name]["tests"] == 2
    waits = next(t for n, t in result["tests"].items() if n.endswith("test_waits"))
    assert waits["wall"] >= 0.3
    # The machine's every core, busy or idle, over the test's time.
    cores = result["cores"]
    assert waits["busy"] + waits["idle"] == pytest.approx(cores * waits["wall"], rel=0.25)
    burner = result["processes"]["other subprocesses (study.run, benches, CLIs)"]
    assert burner["cpu_s"] >= 0.4  # the child's half second, beside this bench's own sampling
    assert result["processes"]["pytest"]["processes"] >= 1  # (and any pytest around it)
    assert result["busy_core_s"] > 0.4 and result["wall_s"] > 0.3
