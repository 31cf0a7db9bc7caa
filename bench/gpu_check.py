"""The GPU check: is this GPU machine ready for studies, and how fast is it?

    bash bench/gpu_check.sh                 # on the GPU machine, at most ~8 minutes on an H200
    bash bench/gpu_check.sh --cpu           # the same steps at toy sizes on a CPU (CI)

1. The machine: GPU, driver, torch, CUDA and cuDNN versions.
2. The tests marked `gpu` (tests/test_gpu.py): a bf16 + channels_last + fused-Adam fold that
   learns, GradNorm's gradient norms under bf16 against fp32, checkpoint and resume, two fold
   workers sharing the GPU (skipped on --cpu, where step 6 packs five on a declared GPU).
3. Host synchronisations per training step, counted by CUDA (torch.cuda.set_sync_debug_mode).
4. bench/gpu_throughput.py: EfficientNet-B4 at 384 px, fp32 / bf16 / bf16+channels_last /
   +compile, batch 8/16/32, and 1, 2 and 5 workers on the one GPU with peak memory each.
5. One fold worker's GPU memory (mtl.measure_step_memory: one training step's peak and the
   CUDA context, and what stays resident) for every model of the `paper` and `search`
   presets, written as rows of study/data/fold_memory.csv to OUT/fold_memory.csv: append
   them to that file (with the GPU's name and the date) and the placement uses them.
6. One epoch of the `paper` configuration with all five folds placed on the GPU by the
   automatic placement (with the figure of step 5), on a 384 px store: study-level
   patches/s, GPU utilisation and memory sampled through NVML, the share of the step spent
   waiting for the data loader, and the epoch time projected to the real data set's size.
7. bench/balancer_cost.py: each balancer's step time and peak memory against equal weighting
   with EfficientNet-B4 at 384 px, batch 8 (skipped on --cpu: CI runs that script itself).

Everything goes to OUT/gpu_check.json and OUT/gpu_check.md (default OUT: gpu-check/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl import (  # noqa: E402
    FoldTrainer,
    SynthSpec,
    build_synthetic_store,
    original,
    task_losses,
    tiny,
)

# The original data set: ~15,000 patches, of which a fold trains on four fifths.
REAL_TRAINING_PATCHES_PER_FOLD = 12_000


def machine(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": "cpu",
        "driver": None,
        "gpu_memory_gib": None,
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device=properties.name, gpu_memory_gib=properties.total_memory / 2**30)
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as error:  # the check goes on without it
            info["driver"] = f"unknown ({error})"
    return info


def run_tests(cpu: bool) -> dict:
    env = {**os.environ, "HEP2_TEST_DEVICE": "cpu" if cpu else "cuda"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_gpu.py")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    print(done.stdout[-3000:])
    return {"passed": done.returncode == 0, "summary": summary,
            "seconds": time.perf_counter() - started}  # fmt: skip


def syncs_per_step(device: torch.device, steps: int = 5) -> float | None:
    """CUDA's count of synchronising calls in a training step (forward, losses, GradNorm's
    backward, fused Adam, the metric sums); None on a CPU."""
    if device.type != "cuda":
        return None
    from mtl import MultiTaskUNet, RunningSums, build_balancer

    config = tiny()
    model = MultiTaskUNet.from_config(config).to(device).channels_last()
    balancer = build_balancer("gradnorm", model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    sums = RunningSums(device)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (8, 1, 64, 64), dtype=torch.uint8, generator=g),
        "pattern": torch.randint(0, 7, (8,), generator=g),
        "intensity": torch.randint(0, 2, (8,), generator=g).float(),
    }
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            output = model(batch["image"])
        losses = task_losses(output, batch, "dice")
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses)
        optimizer.step()
        sums.update(output, batch, losses)

    step()  # the first step allocates and autotunes
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs) / steps


def throughput(cpu: bool, out: Path) -> dict:
    args = ["--json", str(out / "throughput.json")]
    if cpu:
        args += ["--encoder", "tu-mobilenetv3_small_050", "--size", "64", "--batches", "4",
                 "--steps", "1", "--warmup", "1", "--workers", "1", "2",
                 "--duration", "0.5"]  # fmt: skip
        # In this process, whose torch and model library are loaded already: on a GPU the
        # measurement gets a process of its own.
        sys.path.insert(0, str(ROOT / "bench"))
        import gpu_throughput

        try:
            gpu_throughput.main(args)
        except Exception as error:
            return {"error": repr(error)}
        return json.loads((out / "throughput.json").read_text())
    return run_bench("gpu_throughput.py", args, out / "throughput.json")


def run_bench(script: str, args: list[str], result: Path) -> dict:
    """bench/SCRIPT ARGS in a process of its own; the JSON it wrote to `result`, or the
    error it printed."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    print(done.stdout[-6000:])
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    return json.loads(result.read_text())


def throughput_store(out: Path, size: int, patients: int, specimens: int, sources: int = 2):
    """A store of the real set's layout (patients of the real fold table, its classes) whose
    patches are copies of a few synthetic ones (`sources` patients' worth per specimen):
    throughput does not depend on the pixels, and rendering thousands of 384 px patches would
    take longer than the check."""
    from mtl import INDEX_COLUMNS, StoreWriter, choose_patients, open_store

    if (out / "store.json").exists():
        return open_store(out)
    source = build_synthetic_store(
        out.with_name(out.name + "-source"), SynthSpec(patients=sources, size=size, specimens=1),
        force=True,
    )  # fmt: skip
    per_specimen = len(source.index)  # both source patients' patches, reused per specimen
    table = choose_patients(patients, seed=0)
    rows = [
        (f"{p.patient:05d}_p{s}_patch{k}", p.patient, s, k, p.pattern, p.intensity)
        for p in table.itertuples()
        for s in range(specimens)
        for k in range(per_specimen)
    ]
    with StoreWriter(out, len(rows), size, force=True) as writer:
        for i in range(len(rows)):
            writer.write(i, *source[i % per_specimen])
        return writer.commit(pd.DataFrame(rows, columns=list(INDEX_COLUMNS)), source="gpu-check")


class NvmlSampler(threading.Thread):
    """GPU utilisation (%) and memory used (GiB) of GPU 0, every `interval` seconds."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            return
        while not self.stopped.wait(self.interval):
            use = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            self.samples.append((use.gpu, memory.used / 2**30))

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_max_gib": None}
        util, memory = np.array(self.samples).T
        return {"gpu_util_mean": float(util.mean()), "gpu_util_max": float(util.max()),
                "gpu_memory_max_gib": float(memory.max())}  # fmt: skip


def fold_memory(cpu: bool, out: Path) -> dict:
    """One training step of every model of the paper and search presets (each balancer: the
    GradNorm step keeps more alive), measured on GPU 0; rows for study/data/fold_memory.csv."""
    from mtl import measure_step_memory
    from study.driver.memory import FIGURES, MODEL_KEY, distinct_models
    from study.spec.presets import paper, search

    configs = distinct_models([*paper().train_configs(), *search().train_configs()])
    if cpu:
        return {"rows": [], "note": "not measured: no CUDA on a --cpu dry run"}
    store = throughput_store(out / "store-memory", 384, patients=10, specimens=1)
    header = FIGURES.read_text().splitlines()[0]
    rows = []
    for config in configs:
        figure = measure_step_memory(config, store)
        row = {k: getattr(config, k) for k in MODEL_KEY}
        row.update(figure.as_dict(), date=time.strftime("%Y-%m-%d"), source="bench/gpu_check.sh")
        rows.append(row)
        print(f"  {dict((k, row[k]) for k in ('balancer', 'worker_gib', 'resident_gib'))}")
    lines = [header] + [",".join(str(row[k]) for k in header.split(",")) for row in rows]
    (out / "fold_memory.csv").write_text("\n".join(lines) + "\n")
    return {"rows": rows}


class SharedFolds:
    """The five folds in one process, each epoch one fold after the other (the placement of
    a GPU that cannot hold a worker per fold); run_epoch returns every fold's result."""

    def __init__(self, config, setup):
        from study.driver.trial import Folds

        self.folds = Folds(config, setup)

    def run_epoch(self):
        return self.folds.call("run_epoch")


def paper_epoch(cpu: bool, out: Path, patients: int, memory: dict) -> dict:
    """One epoch of the paper configuration, five folds packed on the GPU as a study packs
    them (study/driver/placement.py), each a FoldWorker actor."""
    import ray

    from study.driver.folds import FoldWorker, TrialSetup
    from study.driver.placement import cluster_nodes, plan_placement

    # On a CPU the smallest store that gives every fold a patient: 15 patches per patient.
    size, specimens, sources = (64, 1, 1) if cpu else (384, 4, 2)
    store = throughput_store(out / f"store-{size}px-{patients}p", size, patients, specimens,
                             sources)  # fmt: skip
    base = tiny() if cpu else original()
    config = base.replace(data=str(store.path), epochs=1, device="auto", folds="stratified",
                          num_workers=0 if cpu else 2)  # fmt: skip
    # On the CPU check the GPU is only declared to Ray, so that the packing is exercised.
    gpus = 1 if cpu else torch.cuda.device_count()
    ray.init(address="local", num_gpus=gpus, num_cpus=os.cpu_count(), include_dashboard=False,
             configure_logging=False, log_to_driver=False)  # fmt: skip
    try:
        mine = [r for r in memory.get("rows", []) if r["balancer"] == config.balancer]
        plan = plan_placement(
            cluster_nodes(), 5,
            fold_memory_gib=mine[0]["worker_gib"] if mine else None,
            resident_gib=mine[0]["resident_gib"] if mine else None,
            memory_source="measured above" if mine else "",
        )  # fmt: skip
        setup = TrialSetup(
            base=config, folds=tuple("ABCDE"), score_metrics=(), store_hash=store.content_hash,
            fold_log="", threads=plan.threads, offload=plan.offload, trainer=FoldTrainer,
        )  # fmt: skip
        if plan.gpus_per_trial:
            # The GPU cannot hold a worker per fold: the five share one process, in turn.
            remote = ray.remote(num_cpus=plan.cpus_per_trial, num_gpus=1)(SharedFolds)
            workers = [remote.remote(config, setup)]
        else:
            remote = ray.remote(num_cpus=plan.cpus_per_fold, num_gpus=plan.gpus_per_fold)(
                FoldWorker
            )
            workers = [remote.remote(config, fold, setup) for fold in setup.folds]
        ray.get([w.__ray_ready__.remote() for w in workers])  # models built, before the clock
        sampler = NvmlSampler()
        sampler.start()
        started = time.perf_counter()
        results = ray.get([w.run_epoch.remote() for w in workers])
        if plan.gpus_per_trial:
            (results,) = results  # one process, every fold's result
        seconds = time.perf_counter() - started
        sampler.stopped.set()
    finally:
        ray.shutdown()
    metrics = [m for m, _ in results]
    train = sum(m.train.patches for m in metrics)
    val = sum(m.val.patches for m in metrics)
    # Training patches/s of the study (five folds), over the epoch's wall time (validation too).
    rate = train / seconds
    return {
        "store": str(store.path),
        "patients": patients,
        "placement": plan.describe(),
        "gpus_per_fold": plan.gpus_per_fold,
        "cpus_per_fold": plan.cpus_per_fold,
        "seconds": seconds,
        "train_patches": train,
        "val_patches": val,
        "train_patches_per_s": rate,
        "data_wait_share": sum(m.data_seconds for m in metrics) / sum(m.seconds for m in metrics),
        "projected_epoch_s": 5 * REAL_TRAINING_PATCHES_PER_FOLD / rate,
        **sampler.summary(),
    }


def balancer_cost(cpu: bool, out: Path) -> dict:
    if cpu:
        return {"note": "GPU only (CI runs bench/balancer_cost.py on its own)"}
    result = out / "balancer_cost.json"
    cost = run_bench("balancer_cost.py", ["--models", "b4", "--steps", "3", "--json", str(result)],
                     result)  # fmt: skip
    return cost if "error" in cost else cost["models"]["b4"]


def markdown(report: dict) -> str:
    m, t, e = report["machine"], report["throughput"], report["paper_epoch"]
    lines = [
        f"# GPU check: {m['device']}",
        "",
        f"torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, driver {m['driver']}, "
        f"{m['gpus']} GPU(s) of {m['gpu_memory_gib'] or 0:.0f} GiB; {report['date']}",
        "",
        f"- gpu tests: {report['tests']['summary']}",
        f"- host syncs per training step: {report['syncs_per_step']}",
        "",
        "| variant | batch | patches/s | vs fp32 b8 | peak GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in t.get("variants", []):
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        lines.append(f"| {row['variant']} | {row['batch']} | {row['patches_per_s']:,.1f} | "
                     f"{row['ratio']:.2f}x | {peak} |")  # fmt: skip
    lines += ["", "| workers on one GPU | patches/s (sum) | vs 1 | peak GiB per worker |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for workers, row in t.get("shared_device", {}).items():
        peak = row.get("peak_gib_per_worker")
        lines.append(f"| {workers} | {row['patches_per_s']:,.1f} | {row['ratio']:.2f}x | "
                     f"{'-' if peak is None else f'{peak:.1f}'} |")  # fmt: skip
    lines += ["", "| fold worker (paper/search model) | balancer | GiB per worker | resident GiB |",
              "|---|---|---:|---:|"]  # fmt: skip
    for row in report["fold_memory"].get("rows", []):
        model = f"{row['encoder']} {row['image_size']} px, batch {row['batch_size']}"
        lines.append(f"| {model} | {row['balancer']} | {row['worker_gib']:.2f} | "
                     f"{row['resident_gib']:.2f} |")  # fmt: skip
    if not report["fold_memory"].get("rows"):
        lines.append(f"| {report['fold_memory'].get('note', 'not measured')} | | | |")
    util, memory = e["gpu_util_mean"], e["gpu_memory_max_gib"]
    lines += [
        "",
        f"paper configuration, one epoch, five folds ({e['placement']}), "
        f"{e['train_patches']} training patches: {e['train_patches_per_s']:,.1f} patches/s, "
        f"{e['seconds']:.0f} s; data loader {100 * e['data_wait_share']:.0f}% of the step; "
        f"GPU utilisation {'-' if util is None else f'{util:.0f}%'} (mean), memory "
        f"{'-' if memory is None else f'{memory:.1f} GiB'} "
        f"(max); an epoch of the real set ({REAL_TRAINING_PATCHES_PER_FOLD:,} training patches "
        f"per fold) projected at {e['projected_epoch_s']:.0f} s",
    ]
    cost = report.get("balancer_cost", {})
    if "ratio_to_equal" in cost:
        names = list(cost["ratio_to_equal"])
        time_row = " | ".join(f"{cost['ratio_to_equal'][n]:.2f}x" for n in names)
        memory_row = " | ".join(f"{cost['memory_ratio_to_equal'][n]:.2f}x" for n in names)
        lines += ["", "| EfficientNet-B4 384 px, batch 8 | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names), f"| step time / equal | {time_row} |",
                  f"| peak memory / equal | {memory_row} |"]  # fmt: skip
    else:
        lines += ["", f"balancer cost: {cost.get('note') or cost.get('error', 'not run')}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="a dry run at toy sizes on the CPU")
    parser.add_argument("--out", default="gpu-check", help="folder for the JSON and markdown")
    parser.add_argument("--patients", type=int, help="patients of the epoch's store "
                        "(default 60 on a GPU, 10 with --cpu)")  # fmt: skip
    args = parser.parse_args(argv)
    cpu = args.cpu
    if not cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for a dry run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if cpu else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_dry_run": cpu}
    steps = [
        ("machine", lambda: machine(device)),
        ("tests", lambda: run_tests(cpu)),
        ("syncs_per_step", lambda: syncs_per_step(device)),
        ("throughput", lambda: throughput(cpu, out)),
        ("fold_memory", lambda: fold_memory(cpu, out)),
        (
            "paper_epoch",
            lambda: paper_epoch(
                cpu, out, args.patients or (10 if cpu else 60), report["fold_memory"]
            ),
        ),  # fmt: skip
        ("balancer_cost", lambda: balancer_cost(cpu, out)),
    ]
    for name, step in steps:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        report[name] = step()
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if report["tests"]["passed"] and "error" not in report["throughput"] else 1


if __name__ == "__main__":
    sys.exit(main())
