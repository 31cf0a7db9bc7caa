"""Where a trial's fold workers run: how much of a GPU and how many CPUs each gets, so that
the folds of a trial fit on one node and every GPU of a node is busy.

`plan_placement` is the rule, a pure function of the cluster's node shapes (tested with
made-up clusters); `cluster_nodes` reads those shapes from the running Ray cluster, and from
the autoscaler's node types on a cluster started by `ray up`, whose GPU nodes may not be
running yet. A placement that can never be satisfied is an error here, at study start,
instead of trials that wait forever.

The automatic rule, for k folds per trial on a GPU node with G GPUs:

- n fold workers share each GPU (n = 1 / gpus_per_fold): the smallest n >= ceil(k / G) at
  which the trials that fit side by side on the node keep all G GPUs busy, and never more
  than fit in a GPU's memory (a fold worker's measured figure, `fold_memory_gib`, against
  the GPU's memory). 1 GPU, 5 folds: n = 5. 2 GPUs: n = 3 (three and two). 4 GPUs: n = 3,
  two trials at once. 8 GPUs: n = 2, three trials at once.
- When the node's GPUs cannot hold a trial's k fold workers side by side (a 24 GiB GPU,
  workers of 10 GiB), the k folds of a trial share one process on one GPU, one fold's step
  at a time: their models stay resident on the GPU when k resident states fit beside one
  step's peak, else the idle folds' states wait in host memory. Only a GPU smaller than one
  fold worker refuses the study, naming the figures and the ways out.
- CPUs: the node's CPUs shared by its fold workers (whole CPUs where there are enough).
- On a cluster with GPU nodes of several sizes, the node with the fewest GPUs sets the rule,
  so that a trial fits on every GPU node; larger nodes run more trials side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

AUTO = "auto"
# Ray keeps fractional resources to 4 decimals; 1/3 becomes 0.3333 and three still fit.
_PRECISION = 10_000


@dataclass(frozen=True)
class NodeShape:
    """What one node offers Ray; `count` such nodes are running (or may be started)."""

    gpus: float
    cpus: float
    gpu_memory_gib: float | None = None  # the smallest GPU's, when known
    resources: Mapping[str, float] = field(default_factory=dict)  # custom resources
    count: int = 1
    autoscaled: bool = False  # a node type the autoscaler may start, not a running node
    cuda_nodes: tuple[str, ...] = ()  # Ray ids of such running nodes whose GPUs NVML sees

    def describe(self) -> str:
        memory = f" ({self.gpu_memory_gib:.0f} GiB each)" if self.gpu_memory_gib else ""
        kind = "up to " if self.autoscaled else ""
        return f"{kind}{self.count} x [{self.gpus:g} GPU{memory}, {self.cpus:g} CPU]"


@dataclass(frozen=True)
class Placement:
    """Each fold worker's resources and what they add up to."""

    gpus_per_fold: float  # 0: no GPUs
    cpus_per_fold: float
    actors: bool  # fold workers are actors; otherwise folds run in the trial's process
    cpus_per_trial: float = 0.0  # folds in the trial's process: the trial's CPUs
    folds_per_gpu: int = 0
    trials_at_once: int = 1  # over the cluster as it is (or may grow to)
    threads: int = 1  # torch threads per fold worker
    bundle: Mapping[str, float] = field(default_factory=dict)  # one fold worker's resources
    # Folds in the trial's process on one GPU of their own (the GPU cannot hold a worker per
    # fold): the trial asks for this many GPUs, and `offload` parks the idle folds' states in
    # host memory when even their resident states do not fit beside one step's activations.
    gpus_per_trial: float = 0.0
    offload: bool = False
    reason: str = ""  # why this placement, in words (the GPU's memory and the figures)

    def describe(self) -> str:
        trials = f"{self.trials_at_once} trial{'s' * (self.trials_at_once != 1)} at once"
        if self.gpus_per_trial:
            return f"{self.reason}; {trials}"
        if not self.actors:
            return f"folds in the trial's process, {self.cpus_per_trial:g} CPUs per trial; {trials}"
        if self.gpus_per_fold:
            share = (
                f"{self.folds_per_gpu} fold workers share each GPU"
                if self.folds_per_gpu > 1
                else "one fold worker per GPU"
            )
            why = f"{self.reason}: " if self.reason else ""
            return (
                f"{why}{self.gpus_per_fold:g} GPU and {self.cpus_per_fold:g} CPU per fold "
                f"worker ({share}); {trials}"
            )
        return f"{dict(self.bundle)} per fold worker; {trials}"


class PlacementError(ValueError):
    """A trial of the study can never be placed on this cluster."""


def _fits(node: NodeShape, bundle: Mapping[str, float]) -> int:
    """How many fold workers of `bundle` one such node holds."""
    held = []
    for name, amount in bundle.items():
        if amount <= 0:
            continue
        have = {"GPU": node.gpus, "CPU": node.cpus}.get(name, node.resources.get(name, 0.0))
        if name == "GPU" and amount <= 1:
            # A fraction of a GPU never spans two GPUs: whole GPUs times the workers per GPU.
            held.append(int(have) * int(1 / amount + 1e-9))
        else:
            held.append(int(have / amount + 1e-9))
    return min(held) if held else 0


def _workers_per_gpu(folds: int, gpus: int, cap: int) -> int:
    """The smallest n >= ceil(folds / gpus), at most `cap`, at which whole trials side by
    side keep every GPU busy (or, where none does, keep the most busy)."""
    low = math.ceil(folds / gpus)
    if cap < low:
        return cap  # a trial cannot fit on one node; it spans nodes
    best, best_busy = low, -1
    for n in range(low, max(low, min(cap, folds)) + 1):
        trials = gpus * n // folds
        busy = min(gpus, math.ceil(trials * folds / n))
        if busy == gpus:
            return n
        if busy > best_busy:
            best, best_busy = n, busy
    return best


def _round_down(value: float, step: float) -> float:
    return math.floor(value / step + 1e-9) * step


def plan_placement(
    nodes: Sequence[NodeShape],
    folds: int,
    *,
    gpus_per_fold: float | str = AUTO,
    cpus_per_fold: float | str = AUTO,
    cpus_per_trial: float = 1.0,
    fold_memory_gib: float | None = None,
    resident_gib: float | None = None,
    memory_source: str = "",
    fold_resources: Mapping[str, float] | None = None,
) -> Placement:
    """The placement of a trial's `folds` fold workers on a cluster of `nodes`.

    `fold_memory_gib`: the GPU memory one fold worker needs (a training step's peak and the
    CUDA context; None: not known, not limited); `resident_gib`: what a fold's state keeps
    allocated between its epochs (model, gradients, Adam); `memory_source`: where the first
    figure comes from, for the log.

    Raises PlacementError, naming the resource, what a trial asks and what the cluster has,
    when no trial can ever be placed.
    """
    fold_resources = dict(fold_resources or {})
    cluster = "; ".join(n.describe() for n in nodes) or "no nodes"
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    template = min(gpu_nodes, key=lambda n: (n.gpus, n.cpus)) if gpu_nodes else None

    if gpus_per_fold == AUTO:
        if template is None:
            gpus_per_fold = 0.0
        else:
            memories = [n.gpu_memory_gib for n in gpu_nodes if n.gpu_memory_gib]
            cap = folds
            if fold_memory_gib and memories:
                gpu_memory = min(memories)
                cap = int(gpu_memory // fold_memory_gib)
                if cap < math.ceil(folds / template.gpus):
                    # The node's GPUs cannot hold a trial's fold workers side by side.
                    return _shared_gpu(
                        gpu_nodes, template, folds, gpu_memory, fold_memory_gib,
                        resident_gib, memory_source, cluster,
                    )  # fmt: skip
            n = _workers_per_gpu(folds, int(template.gpus), cap)
            gpus_per_fold = math.floor(_PRECISION / n) / _PRECISION
    gpus_per_fold = float(gpus_per_fold)

    if gpus_per_fold == 0 and not fold_resources:
        # No GPUs: the folds share the trial's own process (no actor per fold).
        trials = sum(n.count * int(n.cpus / cpus_per_trial + 1e-9) for n in nodes)
        if trials == 0:
            largest = max((n.cpus for n in nodes), default=0)
            raise PlacementError(
                f"CPU: a trial asks for {cpus_per_trial:g} CPUs, the largest node has "
                f"{largest:g} (cluster: {cluster})"
            )
        threads = max(1, int(cpus_per_trial))
        return Placement(0.0, cpus_per_trial, actors=False, cpus_per_trial=cpus_per_trial,
                         trials_at_once=trials, threads=threads)  # fmt: skip

    if cpus_per_fold == AUTO:
        # The node that sets the rule shares its CPUs among the fold workers it holds.
        shape = (gpus_per_fold and template) or max(nodes, key=lambda n: n.cpus, default=None)
        if shape is None or shape.cpus <= 0:
            raise PlacementError(f"CPU: the cluster offers no CPUs to fold workers ({cluster})")
        workers = _fits(shape, {"GPU": gpus_per_fold, **fold_resources}) if (
            gpus_per_fold or fold_resources
        ) else folds  # fmt: skip
        workers = max(workers, 1)
        per_trial = folds * (workers // folds) or workers
        share = shape.cpus / per_trial
        cpus_per_fold = math.floor(share) if share >= 1 else _round_down(share, 0.25)
        if cpus_per_fold <= 0:
            raise PlacementError(
                f"CPU: {per_trial} fold workers on a node with {shape.cpus:g} CPUs get less than "
                f"a quarter CPU each ({cluster}); give --cpus-per-fold or more CPUs"
            )
    cpus_per_fold = float(cpus_per_fold)

    bundle = {"CPU": cpus_per_fold, "GPU": gpus_per_fold, **fold_resources}
    asked = ", ".join(f"{k} {v:g}" for k, v in bundle.items() if v)
    per_node = [(node, _fits(node, bundle)) for node in nodes]
    if not any(held for _, held in per_node):
        for name, amount in bundle.items():
            have = max(
                ({"GPU": n.gpus, "CPU": n.cpus}.get(name, n.resources.get(name, 0.0))
                 for n in nodes), default=0.0,
            )  # fmt: skip
            if amount > have or (name == "GPU" and amount > 0 and have < 1):
                raise PlacementError(
                    f"{name}: a fold worker asks for {amount:g}, the largest node has "
                    f"{have:g} (cluster: {cluster})"
                )
        raise PlacementError(f"a fold worker asks for {asked}; no node has all of it ({cluster})")
    slots = sum(node.count * held for node, held in per_node)
    if slots < folds:
        raise PlacementError(
            f"a trial needs {folds} fold workers of {asked}; the cluster holds {slots} ({cluster})"
        )
    # Trials side by side: whole trials per node where a trial fits on one, then what the
    # remaining workers of all nodes add up to.
    whole = sum(node.count * (held // folds) for node, held in per_node)
    spare = sum(node.count * (held % folds) for node, held in per_node)
    trials = whole + spare // folds
    per_gpu = int(1 / gpus_per_fold + 1e-9) if 0 < gpus_per_fold <= 1 else 0
    reason = ""
    if gpus_per_fold and fold_memory_gib and template and template.gpu_memory_gib:
        source = f" ({memory_source})" if memory_source else ""
        reason = (
            f"{template.gpu_memory_gib:.0f} GiB GPU, fold workers of {fold_memory_gib:g} GiB"
            f"{source}"
        )
    return Placement(gpus_per_fold, cpus_per_fold, actors=True, folds_per_gpu=per_gpu,
                     trials_at_once=max(trials, 1), threads=max(1, int(cpus_per_fold)),
                     bundle=bundle, reason=reason)  # fmt: skip


def _shared_gpu(
    gpu_nodes: Sequence[NodeShape],
    template: NodeShape,
    folds: int,
    gpu_memory: float,
    fold_memory_gib: float,
    resident_gib: float | None,
    memory_source: str,
    cluster: str,
) -> Placement:
    """A trial's folds in one process on one GPU, one fold's step at a time: the fold models
    resident on the GPU when they fit beside one step's activations, else parked in host
    memory between their epochs. PlacementError when one fold's step alone does not fit."""
    source = f" ({memory_source})" if memory_source else ""
    figure = f"{gpu_memory:.0f} GiB GPU, fold workers of {fold_memory_gib:g} GiB{source}"
    if fold_memory_gib > gpu_memory:
        raise PlacementError(
            f"GPU memory: a fold worker needs about {fold_memory_gib:g} GiB{source}, the "
            f"smallest GPU has {gpu_memory:.1f} GiB (cluster: {cluster}). Ways out: "
            "--set batch_size= (smaller batches need less), --fold-memory-gib GIB (if the "
            "figure is wrong for this GPU), --gpus-per-fold G (a placement of your own), or "
            "larger GPUs"
        )
    resident = resident_gib if resident_gib is not None else fold_memory_gib
    # One fold's step at its peak, the other folds' states resident beside it.
    resident_fits = fold_memory_gib + (folds - 1) * resident <= gpu_memory
    how = (
        f"fold models resident ({resident:.2g} GiB each)"
        if resident_fits
        else f"idle folds' states in host memory ({folds} x {resident:.2g} GiB do not fit)"
    )
    reason = f"{figure}: the {folds} folds of a trial share one process on the GPU, {how}"
    share = template.cpus / template.gpus  # a GPU's share of its node's CPUs
    cpus = math.floor(share) or _round_down(share, 0.25)
    if cpus <= 0:
        raise PlacementError(f"CPU: the GPU nodes offer no CPUs to a trial ({cluster})")
    trials = sum(n.count * min(int(n.gpus), int(n.cpus / cpus + 1e-9)) for n in gpu_nodes)
    return Placement(
        gpus_per_fold=0.0, cpus_per_fold=cpus, actors=False, cpus_per_trial=cpus,
        trials_at_once=max(trials, 1), threads=max(1, int(cpus)), gpus_per_trial=1.0,
        offload=not resident_fits, reason=reason,
    )  # fmt: skip


# ---------------------------------------------------------------------------- the live cluster

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # written by `ray up` on the head
# A node type of a cluster file may declare its GPUs' memory as this resource (GiB per GPU):
# NVML cannot be asked on a node that is not running yet.
MEMORY_RESOURCE = "gpu_memory_gib"


def _gpu_memory_gib() -> float | None:
    """The smallest GPU's memory on this node, through NVML (None without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            totals = [
                pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                for i in range(count)
            ]
        finally:
            pynvml.nvmlShutdown()
        return min(totals) / 2**30 if totals else None
    except Exception:  # no NVML library, no driver: a node declaring GPUs Ray cannot see
        return None


def _autoscaler_node_types(path: Path = BOOTSTRAP_CONFIG) -> list[NodeShape]:
    """Worker node types the autoscaler of a `ray up` cluster may start."""
    path = path.expanduser()
    if not path.exists():
        return []
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    shapes = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = dict(spec.get("resources") or {})
        count = int(spec.get("max_workers", 0))
        if name == head or count <= 0:
            continue
        gpus, cpus = float(resources.pop("GPU", 0)), float(resources.pop("CPU", 0))
        memory = resources.pop(MEMORY_RESOURCE, None)
        shapes.append(NodeShape(gpus, cpus, memory, resources, count, autoscaled=True))
    return shapes


def cluster_nodes(probe_timeout_s: float = 15.0) -> list[NodeShape]:
    """The running nodes of the Ray cluster (GPU memory read on each GPU node through NVML),
    plus the node types its autoscaler may add."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(_gpu_memory_gib)
    memory = {}
    pending = {
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(): n["NodeID"]
        for n in alive
        if n["Resources"].get("GPU", 0) >= 1
    }
    if pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=probe_timeout_s)
        memory = {pending[ref]: ray.get(ref) for ref in ready}
    shapes: dict[tuple, list[str]] = {}  # identical nodes counted once: key -> node ids
    for n in alive:
        resources = {
            k: v
            for k, v in n["Resources"].items()
            if k not in ("CPU", "GPU", "memory", "object_store_memory", MEMORY_RESOURCE)
            and not k.startswith(("node:", "accelerator_type:"))
        }
        key = (
            float(n["Resources"].get("GPU", 0)),
            float(n["Resources"].get("CPU", 0)),
            memory.get(n["NodeID"]) or n["Resources"].get(MEMORY_RESOURCE),
            tuple(sorted(resources.items())),
        )
        shapes.setdefault(key, []).append(n["NodeID"])
    running = [
        NodeShape(
            gpus,
            cpus,
            gib,
            dict(resources),
            len(ids),
            cuda_nodes=tuple(i for i in ids if memory.get(i)),
        )  # fmt: skip
        for (gpus, cpus, gib, resources), ids in shapes.items()
    ]
    return running + _autoscaler_node_types()


# ---------------------------------------------------------------------------- a plan on paper

GB = 1e9 / 2**30  # GiB in a GB: GPUs are sold in GB, and NVML reports bytes


def plan_table(
    gpu_gb: Sequence[float],
    worker_gib: Sequence[float],
    resident_gib: float,
    folds: int = 5,
    gpus: int = 1,
    cpus: float = 8,
) -> str:
    """A Markdown table of the automatic placement on one node of `gpus` GPUs of each size in
    `gpu_gb` (as sold, in GB), for fold workers of each figure in `worker_gib`."""
    lines = [
        "| GPU | " + " | ".join(f"fold worker {w:g} GiB" for w in worker_gib) + " |",
        "|---|" + "---|" * len(worker_gib),
    ]
    for size in gpu_gb:
        node = NodeShape(gpus=gpus, cpus=cpus, gpu_memory_gib=size * GB)
        cells = []
        for worker in worker_gib:
            try:
                plan = plan_placement(
                    [node], folds, fold_memory_gib=worker, resident_gib=resident_gib
                )
            except PlacementError:
                cells.append("refused: one step does not fit")
                continue
            if plan.gpus_per_trial:
                how = "models resident" if not plan.offload else "idle folds in host memory"
                cells.append(f"{folds} folds share one process ({how})")
            else:
                cells.append(
                    f"{plan.folds_per_gpu} workers per GPU, {plan.trials_at_once} trial(s)"
                )
        lines.append(f"| {size:g} GB ({size * GB:.1f} GiB) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mtl import add_version_option
    from study.driver.memory import fold_memory, resident_gib
    from study.spec.presets import PRESETS, get_preset

    parser = argparse.ArgumentParser(
        prog="python -m study.driver.placement",
        description="The automatic placement of a preset's fold workers on one node of GPUs "
        "of the given sizes, as a Markdown table (what docs/cluster.md shows). Without "
        "--fold-memory-gib the preset's stored figure is used, when one was measured.",
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="paper")
    parser.add_argument(
        "--gpu-gb", type=float, nargs="+", default=[16, 24, 40, 80, 141], metavar="GB",
        help="GPU sizes as sold (default: 16 24 40 80 141)",
    )  # fmt: skip
    parser.add_argument("--fold-memory-gib", type=float, nargs="+", metavar="GIB",
                        help="fold worker figures to plan for")  # fmt: skip
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node (default 1)")
    parser.add_argument("--cpus", type=float, default=8, help="CPUs per node (default 8)")
    add_version_option(parser)
    args = parser.parse_args(argv)
    study = get_preset(args.preset)
    figure = fold_memory(study)
    workers = args.fold_memory_gib or ([figure.worker_gib] if figure.worker_gib else [])
    if not workers:
        parser.error(f"{args.preset}: no measured fold worker figure; give --fold-memory-gib")
    resident = figure.resident_gib or resident_gib(study.train_configs())
    source = figure.source if not args.fold_memory_gib else "given (--fold-memory-gib)"
    print(
        f"{args.preset}: fold workers {source}; a fold's resident state {resident:.2f} GiB "
        f"(counted); {len(study.folds)} folds, {args.gpus} GPU(s) and {args.cpus:g} CPUs a node"
    )
    print(plan_table(args.gpu_gb, workers, resident, len(study.folds), args.gpus, args.cpus))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
