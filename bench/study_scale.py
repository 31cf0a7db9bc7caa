"""Whether the driver stays flat as a study grows: N scripted trials, timed as they end.

    python bench/study_scale.py --trials 1000 --json scale.json     # the target: ratio <= 1.5
    python bench/study_scale.py --trials 20 --epochs 1              # CI-sized
    python bench/study_scale.py --trials 1000 --report              # and the study's report

A study of N configurations (a grid over `lr`, no early stopping), each trained on 5 folds
for a few epochs by a scripted trainer: no torch training, so what is timed is the driver
and Tune (scheduling, reports, checkpoints, the experiment state, the results written as
each trial ends, the live view, checkpoint clean-up). The driver's seconds per trial are the
spacing of trial ends (when the driver wrote each trial's results) over the first tenth of
the trials and over the last tenth; their ratio (last / first) is 1 for a driver whose cost
per trial does not grow with the study. Beside it, two parts of that time, timed in the
driver: the harness's own work per trial (its Tune callbacks: results written, checkpoints
dropped, the live view) and Tune's saves of its experiment state (every trial's state, so
they grow with the study), each as CPU time of the driver's thread. Printed, and written as
JSON with --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from mtl import ScriptedTrainer
from study.driver.prepare import StudyRequest
from study.driver.tuner import run_study
from study.report.document import write_report
from study.spec.presets import StudyConfig, smoke


class LearningRateTrainer(ScriptedTrainer):
    """Every metric a number of the configuration's learning rate and the epoch. Defined in
    the script, so Ray ships it to the trials by value."""

    def score(self) -> float:
        return min(1.0, 10 * self.config.lr + 0.01 * self.epoch)


def scale_study(trials: int, epochs: int) -> StudyConfig:
    base = smoke()
    rates = np.geomspace(1e-4, 1e-1, trials)
    return dataclasses.replace(
        base,
        name=f"scale-{trials}",
        train=base.train.replace(epochs=epochs),
        configurations=tuple({"lr": float(rate)} for rate in rates),
        scheduler="none",
        test_patients=0.0,
    )


# (monotonic time at the end of the call, seconds it took) of each timed driver call.
CALLS: dict[str, list[tuple[float, float]]] = {"trial_end": [], "harness": [], "tune_state": []}


def time_calls(owner: type, name: str, part: str) -> None:
    """Record every call of owner.name (in this process: the driver) under `part`."""
    original = getattr(owner, name)

    def timed(self, *args, **kwargs):
        # CPU time of the driver's thread: not the time it waited for the GIL, which Tune's
        # own threads (the experiment's sync to storage) hold longer as the study grows.
        started = time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            CALLS[part].append((time.monotonic(), time.thread_time() - started))

    setattr(owner, name, timed)


def instrument() -> None:
    from ray.tune.execution.tune_controller import TuneController

    from study.driver.callbacks import LiveView, ResultsWriter
    from study.driver.checkpoints import CheckpointKeeper

    time_calls(ResultsWriter, "write", "trial_end")  # once per trial, as it ends
    for owner, name in (
        (CheckpointKeeper, "finished"),
        (LiveView, "refresh"),
    ):
        time_calls(owner, name, "harness")
    time_calls(TuneController, "save_to_dir", "tune_state")


def per_trial(ends: np.ndarray, part: str | None = None) -> float:
    """Seconds per trial over these consecutive trial ends: their spacing, or (with `part`)
    the driver's seconds in that part between the first and the last of them."""
    trials = len(ends) - 1
    if part is None:
        return float((ends[-1] - ends[0]) / trials)
    inside = [s for t, s in CALLS[part] if ends[0] < t <= ends[-1]]
    if part == "harness":  # the results written at each trial end are the harness's too
        inside += [s for t, s in CALLS["trial_end"] if ends[0] < t <= ends[-1]]
    return float(sum(inside) / trials)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--report", action="store_true",
                        help="also time the study's report (write_report: the tables and "
                        "figures python -m study.run writes when the study ends)")  # fmt: skip
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.trials < 20:
        parser.error("--trials: at least 20 (a tenth must span two trials)")

    study = scale_study(args.trials, args.epochs)
    instrument()
    with tempfile.TemporaryDirectory() as tmp:
        request = StudyRequest(study, Path(tmp), cpus=args.cpus, trainer=LearningRateTrainer)
        started = time.monotonic()
        _, trials = run_study(request)
        total = time.monotonic() - started
        if args.report:
            started = time.monotonic()
            written = write_report(Path(tmp) / study.name, console=Console(file=io.StringIO()))
            report_s = time.monotonic() - started
    ends = np.array([t for t, _ in CALLS["trial_end"]])
    tenth = len(ends) // 10
    first, last = ends[:tenth], ends[-tenth:]
    result = {
        "trials": args.trials,
        "completed": int((trials.status == "completed").sum()),
        "folds": len(study.folds),
        "epochs": args.epochs,
        "cpus": args.cpus,
        "total_s": round(total, 1),
    }
    if args.report:
        result["report_s"] = round(report_s, 1)
        result["report_pngs"] = sum(path.suffix == ".png" for path in written)
    for part, name in (
        (None, "s_per_trial"),
        ("harness", "harness_s"),
        ("tune_state", "tune_state_s"),
    ):
        result[f"first_tenth_{name}"] = round(per_trial(first, part), 4)
        result[f"last_tenth_{name}"] = round(per_trial(last, part), 4)
    first_s, last_s = result["first_tenth_s_per_trial"], result["last_tenth_s_per_trial"]
    result["ratio"] = round(last_s / first_s, 3) if first_s else float("nan")
    print(
        f"{args.trials} trials ({result['completed']} completed), {len(study.folds)} folds x "
        f"{args.epochs} epochs, {args.cpus} CPUs, {total:.0f} s in all. Seconds per trial, "
        "first tenth -> last tenth:"
    )
    for part, name in (("wall (trial ends' spacing)", "s_per_trial"),
                       ("  the harness's driver work", "harness_s"),
                       ("  Tune's experiment-state saves", "tune_state_s")):  # fmt: skip
        a, b = result[f"first_tenth_{name}"], result[f"last_tenth_{name}"]
        print(f"{part:32s} {a:.4f} -> {b:.4f}  (x{b / a:.2f})" if a else f"{part:32s} {a} -> {b}")
    if args.report:
        print(f"the report: {result['report_s']:.1f} s, {result['report_pngs']} figures")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
