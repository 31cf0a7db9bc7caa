"""What a study's folds need in GPU memory and on disk, before any trial starts.

GPU memory of one fold worker (study/driver/placement.py packs workers by it), first found of:

1. `--fold-memory-gib` (StudyConfig.fold_memory_gib): the user's figure;
2. a figure measured by bench/gpu_check.sh for the same model, patch size, batch and
   balancer, stored with its GPU and date in study/data/fold_memory.csv;
3. a probe at study start: one training step on a GPU of the cluster (seconds);
4. none: "not measured", and the placement is not limited by memory.

What a fold keeps allocated between its epochs (model, gradients, Adam's moments) is counted
from the model's parameters (mtl.memory), exact without a GPU; the probe measures it too.

Disk: checkpoints hold each fold's model and optimizer state; `check_disk` refuses a local
storage that cannot hold what the study keeps at once.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtl import TrainConfig
from study.spec.presets import StudyConfig
from study.storage import is_uri

GIB = 2**30
FIGURES = Path(__file__).parents[1] / "data" / "fold_memory.csv"
# What a fold worker's memory depends on (the data and the optimizer's settings do not).
MODEL_KEY = ("encoder", "head", "head_hidden", "image_size", "batch_size", "balancer")
# A running trial keeps its latest two checkpoints (study/driver/checkpoints.py).
CHECKPOINTS_PER_RUNNING_TRIAL = 2
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class MemoryFigure:
    """One fold worker's GPU memory (None: not known) and where the figure comes from."""

    worker_gib: float | None
    resident_gib: float | None
    source: str


def model_key(config: TrainConfig) -> tuple[str, ...]:
    return tuple(str(getattr(config, field)) for field in MODEL_KEY)


def distinct_models(configs: Sequence[TrainConfig]) -> list[TrainConfig]:
    """One configuration per model key (a study's configurations mostly share one model)."""
    return list({model_key(c): c for c in configs}.values())


def stored_figure(configs: Sequence[TrainConfig], path: Path | None = None) -> MemoryFigure | None:
    """The largest stored figure over `configs` (in `path`, default FIGURES), when every one
    of them has one."""
    with open(path or FIGURES, newline="") as handle:
        rows = list(csv.DictReader(handle))
    found = []
    for config in distinct_models(configs):
        matches = [r for r in rows if tuple(r[k] for k in MODEL_KEY) == model_key(config)]
        if not matches:
            return None
        found.append(max(matches, key=lambda r: float(r["worker_gib"])))
    worst = max(found, key=lambda r: float(r["worker_gib"]))
    return MemoryFigure(
        float(worst["worker_gib"]),
        max(float(r["resident_gib"]) for r in found),
        f"measured on {worst['gpu']} by {worst['source']}, {worst['date']}",
    )


def resident_gib(configs: Sequence[TrainConfig]) -> float:
    """The largest resident state of a fold over `configs`, counted (mtl.memory)."""
    from mtl import state_bytes

    return max(state_bytes(c, with_gradients=True) for c in distinct_models(configs)) / GIB


def checkpoint_gib(configs: Sequence[TrainConfig]) -> float:
    """The largest checkpoint of one fold over `configs`, counted (model and Adam state)."""
    from mtl import state_bytes

    return max(state_bytes(c) for c in distinct_models(configs)) / GIB


def fold_memory(study: StudyConfig, probe_nodes: Sequence[str] = ()) -> MemoryFigure:
    """The study's fold-worker figure (see the module's docstring for the order).

    `probe_nodes`: Ray node ids of running nodes with a CUDA GPU (NVML answered there); the
    first is asked to measure one step when no figure is given or stored.
    """
    configs = study.train_configs()
    counted = resident_gib(configs)
    if study.fold_memory_gib is not None:
        return MemoryFigure(study.fold_memory_gib, counted, "--fold-memory-gib")
    stored = stored_figure(configs)
    if stored is not None:
        return stored
    if probe_nodes:
        measured = _probe(distinct_models(configs), probe_nodes[0])
        if measured is not None:
            worker = max(m["worker_gib"] for m in measured)
            resident = max(m["resident_gib"] for m in measured)
            return MemoryFigure(worker, resident, f"probed on {measured[0]['gpu']} at study start")
    return MemoryFigure(None, counted, "not measured")


def _probe(configs: Sequence[TrainConfig], node_id: str) -> list[dict] | None:
    """One training step of each configuration on a whole GPU of the node `node_id`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def measure(configs):
        from mtl import measure_step_memory

        figures = [measure_step_memory(c) for c in configs]
        return None if None in figures else [f.as_dict() for f in figures]

    task = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(measure).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
    )
    ref = task.remote(list(configs))
    ready, _ = ray.wait([ref], timeout=PROBE_TIMEOUT_S)
    if not ready:
        ray.cancel(ref, force=True)
        return None
    try:
        return ray.get(ref)
    except ray.exceptions.RayError:  # out of memory on the probe, a lost node: not measured
        return None


@dataclass(frozen=True)
class DiskNeed:
    """The checkpoint bytes a study holds at once, and how they add up."""

    checkpoint_gib: float  # one fold's checkpoint
    folds: int
    running: int  # trials training at once, each keeping CHECKPOINTS_PER_RUNNING_TRIAL
    kept: int  # finished trials keeping checkpoints
    kept_each: int = 1  # checkpoints each kept trial keeps: its latest, or all (keep 0)

    @property
    def gib(self) -> float:
        copies = self.running * CHECKPOINTS_PER_RUNNING_TRIAL + self.kept * self.kept_each
        return self.checkpoint_gib * self.folds * copies

    def describe(self) -> str:
        each = f" x {self.kept_each}" if self.kept_each != 1 else ""
        return (
            f"{self.gib:.1f} GiB of checkpoints at once ({self.folds} folds x "
            f"{self.checkpoint_gib:.2g} GiB x ({self.running} running trial(s) x "
            f"{CHECKPOINTS_PER_RUNNING_TRIAL} + {self.kept} kept{each}))"
        )


def disk_need(study: StudyConfig, trials_at_once: int) -> DiskNeed:
    """What the study's checkpoints take at most at once: every running trial keeps two,
    and the `keep_checkpoints` best finished trials keep their latest; at 0 nothing is
    dropped, and every trial keeps its two."""
    limit = study.max_concurrent or study.num_trials
    running = max(1, min(trials_at_once, limit, study.num_trials))
    checkpoint = checkpoint_gib(study.train_configs())
    if study.keep_checkpoints == 0:
        finished = study.num_trials - running
        return DiskNeed(
            checkpoint, len(study.folds), running, finished, CHECKPOINTS_PER_RUNNING_TRIAL
        )
    return DiskNeed(checkpoint, len(study.folds), running, study.keep_checkpoints)


def check_disk(storage: str, need: DiskNeed) -> None:
    """Refuse a local storage folder (or the disk it would be made on) with less free space
    than the study's checkpoints need, with the figures. Remote storage is not checked."""
    if is_uri(storage) and not storage.startswith("file://"):
        return
    folder = Path(storage.removeprefix("file://")).expanduser().resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = free_gib(existing)
    if free < need.gib:
        raise OSError(
            f"disk: the study keeps up to {need.describe()}, and {existing} has "
            f"{free:.1f} GiB free. Free some space, keep fewer checkpoints (--keep-checkpoints "
            "N), run fewer trials at once (--max-concurrent), or put the experiment elsewhere "
            "(--storage)"
        )


def free_gib(folder: Path) -> float:
    """Free space on the disk of `folder`, in GiB."""
    return shutil.disk_usage(folder).free / GIB
