"""How much training a search needs to find what the full grid finds.

    python bench/study_efficiency.py --json eff.json        # about 30 minutes on 2 CPU cores
    python bench/study_efficiency.py --patients 10 --epochs 2 --alphas 0.1 --folds 2 \\
        --encoder tu-mobilenetv3_small_050 --samples 4 --seeds 1     # CI-sized

1. The grid: every configuration of a discrete conditional space (segmentation loss x
   {equal, GradNorm x alpha}; alpha exists only for GradNorm, as in a study's search) is
   trained for real, on synthetic data with a small model, for the largest epoch budget, on
   every fold (five unless --folds says otherwise). The learning rate is constant, so epoch k
   of that run is what a k-epoch run of the same configuration gives (same seed, same data
   order). The full grid over
   (configuration, epochs in {min..max by step}) therefore costs sum(epochs) per
   configuration, and its best cross-validated score is known.
2. Searches on the same space (epochs searched too), run through Ray Tune with a trainer that
   replays the grid's recorded learning curves, over several sampler seeds each: random
   search, multivariate TPE, and TPE with ASHA (reduction factor 2 and 3).
3. Work is counted in epoch-units (one epoch of one configuration, all folds). For each
   search: the work spent until it first finished a trial whose final score is within 0.01
   of the grid's best (infinite for a seed whose search never did), its median and range
   over seeds, the ratio of the median to the grid's total work, and the work the whole
   search spent.
4. Why ASHA does or does not pay: how well the score at the first rung ranks the
   configurations' final scores (Spearman), and how the differences between configurations
   compare with the noise of a cross-validated score (the best configuration's fold spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from rich.console import Console
from rich.table import Table

from mtl import (
    INTENSITIES,
    PATTERNS,
    EpochMetrics,
    ScriptedTrainer,
    SplitMetrics,
    is_active,
    score,
)
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.spec.presets import StudyConfig, grid, smoke
from study.spec.space import Choice, IntRange

TOLERANCE = 0.01
# name -> (Optuna sampler, Tune scheduler, ASHA reduction factor)
SEARCHES = {
    "random": ("random", "none", 2),
    "tpe": ("tpe", "none", 2),
    "tpe + asha": ("tpe", "asha", 2),
    "tpe + asha, rf 3": ("tpe", "asha", 3),
}


def curve_key(seg_loss: str, balancer: str, alpha, fold) -> tuple:
    """A configuration's learning curve; alpha only where the balancer reads it (null
    elsewhere, as the result tables leave it)."""
    active = is_active("alpha", balancer) and alpha is not None and alpha == alpha
    return (seg_loss, balancer, round(float(alpha), 9) if active else None, fold)


class ReplayTrainer(ScriptedTrainer):
    """mtl's scripted trainer, replaying a grid's recorded validation metrics."""

    curves: dict = {}  # curve_key -> list of per-epoch SplitMetrics

    def __init__(self, config, fold):
        super().__init__(config, fold)
        self.key = curve_key(config.seg_loss, config.balancer, config.alpha, fold)

    def run_epoch(self, progress=None) -> EpochMetrics:
        split = self.curves[self.key][self.epoch]
        self.epoch += 1
        return EpochMetrics(epoch=self.epoch, train=split, val=split, weights=(1.0, 1.0, 1.0),
                            seconds=0.0)  # fmt: skip


def split_from_row(row: pd.Series) -> SplitMetrics:
    """A validation row of epochs.parquet back into SplitMetrics. The search sees the
    scalars only, so the confusion matrices are left empty (zeros)."""
    values = {
        f.name: row[f.name].item() if hasattr(row[f.name], "item") else row[f.name]
        for f in dataclasses.fields(SplitMetrics)
        if f.name in row and not f.name.endswith("_confusion")
    }
    for name, labels in (("pattern", PATTERNS), ("intensity", INTENSITIES)):
        values[f"{name}_confusion"] = tuple((0,) * len(labels) for _ in labels)
    values["patches"] = int(values["patches"])
    return SplitMetrics(**values)


def search_work(trials: pd.DataFrame, target: float) -> float:
    """Epoch-units spent, trials in the order they ran (one at a time), until the first
    finished trial scoring >= target; infinite if none does."""
    spent = 0
    for trial in trials.sort_values("started").itertuples():
        spent += trial.epochs_run
        if trial.status == "completed" and trial.cv_score >= target:
            return spent
    return float("inf")


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--encoder", default="tu-resnet10t", help="the grid's model encoder")
    parser.add_argument("--epochs", type=int, default=6, help="largest epoch budget")
    parser.add_argument("--min-epochs", type=int, default=2, help="and ASHA's grace period")
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.3, 1.5])
    parser.add_argument("--samples", type=int, default=12, help="trials per search")
    parser.add_argument("--seeds", type=int, default=4, help="sampler seeds per search")
    parser.add_argument("--searches", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    min_epochs = min(args.min_epochs, args.epochs)
    budgets = list(range(min_epochs, args.epochs + 1, args.step))
    if budgets[-1] != args.epochs:
        budgets.append(args.epochs)

    base = smoke()
    train = base.train.replace(epochs=args.epochs, encoder=args.encoder, lr=5e-4,
                               lr_schedule="constant", num_folds=args.folds)  # fmt: skip
    losses, alphas = ("dice", "bce"), tuple(args.alphas)
    configurations = grid(seg_loss=losses, balancer=("equal",)) + grid(
        seg_loss=losses, balancer=("gradnorm",), alpha=alphas
    )
    synthetic = dataclasses.replace(base.synthetic, patients=args.patients)
    console = Console()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp)
            study = StudyConfig(name="grid", train=train, configurations=configurations,
                                synthetic=synthetic, keep_checkpoints=1)  # fmt: skip
            study = prepare_data(study, results)
            console.print(f"training the grid: {len(configurations)} configurations x "
                          f"{args.epochs} epochs x {args.folds} folds")  # fmt: skip
            grid_epochs, grid_trials = run_study(StudyRequest(study, results))

            val = grid_epochs[grid_epochs.split == "val"].merge(
                grid_trials[["trial_id", "seg_loss", "balancer", "alpha"]], on="trial_id"
            )
            curves = {}
            keys = ["seg_loss", "balancer", "alpha", "fold"]
            for (loss, balancer, alpha, fold), rows in val.groupby(keys, dropna=False):
                rows = rows.sort_values("epoch")
                curves[curve_key(loss, balancer, alpha, fold)] = [
                    split_from_row(r) for _, r in rows.iterrows()
                ]
            ReplayTrainer.curves = curves
            # Per configuration, fold and epoch: the score; its fold mean is what a k-epoch
            # run reports.
            per_fold = score(val.set_index(["trial_id", "epoch", "fold"]))
            per_epoch = per_fold.groupby(["trial_id", "epoch"]).mean()
            at_budget = per_epoch.unstack("epoch")[budgets]
            best_trial, best_epoch = at_budget.stack().idxmax()
            best = float(at_budget.stack().max())
            grid_work = len(configurations) * sum(budgets)
            target = best - TOLERANCE
            final_best = at_budget.max(axis=1)
            ranked = final_best.sort_values(ascending=False)
            diagnostics = {
                # Does the first rung rank the configurations as their best budgets do?
                "rung_rank_correlation": spearman(at_budget[min_epochs], final_best),
                "best_fold_std": float(per_fold.loc[(best_trial, best_epoch)].std()),
                "best_standard_error": float(
                    per_fold.loc[(best_trial, best_epoch)].std() / np.sqrt(args.folds)
                ),
                "gap_best_to_second": float(ranked.iloc[0] - ranked.iloc[1]),
                "configurations_within_tolerance": int((final_best >= target).sum()),
                "grid_cells_within_tolerance": int((at_budget.stack() >= target).sum()),
            }

            space = {"seg_loss": Choice(losses), "balancer": Choice(("equal", "gradnorm")),
                     "alpha": Choice(alphas),
                     "epochs": IntRange(min_epochs, args.epochs, args.step) if len(budgets) > 1
                     else Choice((args.epochs,))}  # fmt: skip
            found = {name: [] for name in args.searches}
            spent = {name: [] for name in args.searches}
            for name in args.searches:
                sampler, scheduler, factor = SEARCHES[name]
                for seed in range(args.seeds):
                    search = StudyConfig(
                        name=f"{sampler}-{scheduler}-{factor}-{seed}", train=study.train,
                        space=space, num_samples=args.samples, sampler=sampler,
                        scheduler=scheduler, grace_period=min_epochs, reduction_factor=factor,
                        max_concurrent=1, synthetic=synthetic, seed=seed, keep_checkpoints=1,
                    )  # fmt: skip
                    console.print(f"search {name}, seed {seed}")
                    _, trials = run_study(StudyRequest(search, results, trainer=ReplayTrainer))
                    if (trials.status == "errored").any():
                        raise RuntimeError(f"replay failed: {trials.error.dropna().iloc[0]}")
                    found[name].append(search_work(trials, target))
                    spent[name].append(int(trials.epochs_run.sum()))
    finally:
        ray.shutdown()

    summary = {
        name: {
            "work_per_seed": works,
            # A seed that never came within the tolerance counts as infinite work.
            "median_work": float(np.median(works)),
            "ratio_to_grid": float(np.median(works)) / grid_work,
            "spread": [float(np.min(works)), float(np.max(works))],
            "seeds_reaching_target": int(np.isfinite(works).sum()),
            "total_work_per_seed": spent[name],
        }
        for name, works in found.items()
    }
    results = {"grid_configurations": len(configurations), "epoch_budgets": budgets,
               "grid_work": grid_work, "grid_best_score": best, "target": target,
               "samples": args.samples, "seeds": args.seeds, "searches": summary,
               **diagnostics}  # fmt: skip
    table = Table(title=f"epoch-units to come within {TOLERANCE} of the grid's best "
                  f"cv score ({best:.3f}); the full grid costs {grid_work}")  # fmt: skip
    columns = ("search", "median epoch-units to it", "vs grid", "range over seeds",
               "seeds reaching it", "epoch-units spent in all")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "search" else "right")
    table.add_row("full grid", str(grid_work), "1.00x", "-", "-", str(grid_work))
    for name, entry in summary.items():
        low, high = entry["spread"]
        table.add_row(name, f"{entry['median_work']:.0f}", f"{entry['ratio_to_grid']:.2f}x",
                      f"{low:.0f}-{high:.0f}", f"{entry['seeds_reaching_target']}/{args.seeds}",
                      f"{np.mean(entry['total_work_per_seed']):.0f}")  # fmt: skip
    console.print(table)
    console.print(
        f"first rung (epoch {min_epochs}) vs best budget, rank correlation over "
        f"configurations: {diagnostics['rung_rank_correlation']:.2f}; best configuration's "
        f"{args.folds}-fold score: standard error {diagnostics['best_standard_error']:.4f}, "
        f"gap to the second best {diagnostics['gap_best_to_second']:.4f}; "
        f"{diagnostics['configurations_within_tolerance']}/{len(configurations)} "
        f"configurations and {diagnostics['grid_cells_within_tolerance']}/"
        f"{len(configurations) * len(budgets)} (configuration, epochs) cells reach the target"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
