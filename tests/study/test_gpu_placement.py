"""Studies on Ray clusters that declare GPUs (1, 2 and 8 on one node; the work itself runs on
the CPU): the automatic placement runs the smoke study to the end, each fold worker gets the
fraction the rule says, an impossible placement fails within seconds, and a fold allotted
no GPU trains on the CPU.

One cluster serves the module: a 0-CPU head and one worker node, which a test that needs
another shape of node swaps for its own (`gpu_node`)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from mtl import FoldTrainer, ScriptedTrainer
from study.driver.folds import allotted_device
from study.driver.placement import PlacementError
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.run import parse_args, request
from study.spec.presets import smoke

pytestmark = pytest.mark.slow  # Ray clusters and whole studies

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


class Recording:
    """Writes down, once per fold, the resources Ray allotted its worker and the device its
    trainer chose, then runs the trainer's epoch."""

    folder: Path

    def run_epoch(self, progress=None):
        context = ray.get_runtime_context()
        record = {
            "resources": context.get_assigned_resources(),
            "device": str(self.device),
            "actor": context.get_actor_id(),
        }
        (self.folder / f"{context.get_actor_id()}-{self.fold}.json").write_text(json.dumps(record))
        return super().run_epoch(progress)


class RecordingTrainer(Recording, FoldTrainer):
    """A FoldTrainer, recorded: its device is FoldTrainer's choice, and it trains."""


class RecordingScript(Recording, ScriptedTrainer):
    """A scripted trainer, recorded: where only the placement is under test, its workers
    neither import smp nor build a model (seconds of CPU each)."""


@pytest.fixture(scope="module")
def gpu_node(local_cluster):
    """node(**args): the module's cluster with one worker node started with `ray start`
    arguments ARGS (the worker of another shape, if any, removed first)."""
    cluster = local_cluster()
    shape = {}

    def node(**args) -> object:
        if shape.get("args") == args:
            return cluster
        for worker in cluster.workers:
            cluster.remove_node(worker)
        cluster.workers = [cluster.add_node(**args)]
        shape["args"] = args
        cluster.wait_for_nodes()
        deadline = time.monotonic() + 60  # until the scheduler sees only the new node
        while {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")} != {
            cluster.workers[0].node_id
        } or ray.available_resources().get("CPU", 0) < args["num_cpus"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        return cluster

    return node


@pytest.fixture
def one_gpu(gpu_node):
    """The new user's machine: one GPU, six CPUs."""
    return gpu_node(num_cpus=6, num_gpus=1)


def test_an_impossible_placement_fails_within_seconds(one_gpu, tmp_path):
    """The new user's first try: a whole GPU asked per fold."""
    study = prepare_data(dataclasses.replace(smoke(), gpus_per_fold=1.0), tmp_path)
    started = time.monotonic()
    with pytest.raises(PlacementError, match="a trial needs 5 fold workers of CPU 6, GPU 1"):
        run_study(StudyRequest(study, tmp_path))
    assert time.monotonic() - started < 30
    assert not (tmp_path / "smoke" / "study.json").exists()  # nothing written


def _smoke_on(cluster, results: Path, *flags: str):
    """`python -m study.run --preset smoke` on the test's cluster, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "study.run", "--preset", "smoke", "--results", str(results),
         "--address", cluster.address, "--storage-shared", "--no-figures", *flags],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def test_the_command_line_says_so_and_exits(one_gpu, tmp_path):
    done = _smoke_on(one_gpu, tmp_path, "--gpus-per-fold", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: a trial needs 5 fold workers of CPU 6, GPU 1; the cluster holds 1" in done.stdout


def test_a_fold_allotted_no_gpu_trains_on_the_cpu(one_gpu):
    # Both started at once: their processes start side by side.
    actor = ray.remote(num_cpus=1, num_gpus=0)(_Probe).remote()
    gpu_actor = ray.remote(num_cpus=1, num_gpus=0.5)(_Probe).remote()
    assert ray.get(actor.device.remote("auto")) == ("cpu", "")
    assert "allotted this fold no GPU" in ray.get(actor.device.remote("cuda"))[0]
    assert ray.get(gpu_actor.device.remote("auto"))[0] == "auto"
    assert allotted_device("auto") == "auto"  # the driver is no fold worker


class _Probe:
    def device(self, device):
        try:
            return allotted_device(device), os.environ.get("CUDA_VISIBLE_DEVICES")
        except ValueError as error:
            return str(error), None


@pytest.mark.parametrize(("gpus", "fraction"), [(1, 0.2), (2, 0.3333), (8, 0.5)])
def test_the_smoke_study_fills_fake_gpus(gpu_node, tmp_path, gpus, fraction):
    gpu_node(num_cpus=6, num_gpus=gpus)
    records = tmp_path / "records"
    records.mkdir()
    Recording.folder = records
    study = dataclasses.replace(smoke(), train=smoke().train.replace(epochs=1, device="auto"))
    # One configuration: the placement, not the grid, is under test.
    study = dataclasses.replace(study, configurations=study.configurations[:1])
    study = prepare_data(study, tmp_path)
    # Scripted folds: the fractions are under test. FoldTrainer's own choice of device on a
    # GPU fold worker is the 24 GiB test's (which trains for real).
    epochs, trials = run_study(StudyRequest(study, tmp_path, trainer=RecordingScript))
    assert (trials.status == "completed").all() and len(trials) == len(study.configurations)
    seen = [json.loads(p.read_text()) for p in records.glob("*.json")]
    assert len(seen) == 5 * len(study.configurations)
    for record in seen:
        assert record["resources"]["GPU"] == pytest.approx(fraction)
    assert len({r["actor"] for r in seen}) == len(seen)  # a worker per fold
    assert set(epochs.trial_id) == set(trials.trial_id)


def test_a_24_gib_gpu_runs_the_study_whose_folds_do_not_fit_side_by_side(
    gpu_node, tmp_path, capsys
):
    """One GPU declaring 24 GiB and fold workers of 10 GiB (the command line's
    --fold-memory-gib): two fit, a trial has five. The five folds of a trial share one
    process, which holds the GPU, and the study runs to the end. One configuration, one
    epoch, one CPU (one torch thread): the placement is under test, and FoldTrainer's choice
    of device (auto) on a fold worker allotted a GPU that has no CUDA."""
    cluster = gpu_node(num_cpus=1, num_gpus=1, resources={"gpu_memory_gib": 24})
    records = tmp_path / "records"
    records.mkdir()
    Recording.folder = records  # real folds, sharing the trial's process
    args = ["--preset", "smoke", "--results", str(tmp_path), "--address", cluster.address,
            "--storage-shared", "--fold-memory-gib", "10", "--set", "epochs=1",
            "--set", "device=auto"]  # fmt: skip
    asked = request(parse_args(args))
    assert asked.study.fold_memory_gib == 10.0
    study = dataclasses.replace(asked.study, configurations=asked.study.configurations[:1])
    epochs, trials = run_study(dataclasses.replace(asked, study=study, trainer=RecordingTrainer))
    assert (
        "placement: 24 GiB GPU, fold workers of 10 GiB (--fold-memory-gib): the 5 folds of a "
        "trial share one process on the GPU, fold models resident"
    ) in " ".join(capsys.readouterr().out.split())
    assert (trials.status == "completed").all() and len(trials) == 1
    assert len(epochs) == 5 * 2  # folds x splits
    seen = [json.loads(p.read_text()) for p in records.glob("*.json")]
    assert len(seen) == 5 and len({r["actor"] for r in seen}) == 1  # one process
    for record in seen:
        assert record["resources"]["GPU"] == 1
        assert record["device"] == "cpu"  # a declared GPU without CUDA: auto stays on the CPU
    runs = json.loads((tmp_path / "smoke" / "study.json").read_text())["provenance"]["runs"]
    assert runs[0]["settings"]["fold_memory_gib"] == 10.0
