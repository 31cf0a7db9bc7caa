"""`python -m study.export RESULTS/NAME [--trial best|ID] --out MODEL_DIR`.

Turns one trial of a study into a model folder that `python -m mtl.predict` reads: the
trial's fold models (weights only, one file per fold) and `model.json` (the configuration,
the cross-validated metrics, the data store's hash, class names, patch geometry and the
versions of torch and smp it was trained with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mtl import (
    INTENSITIES,
    MODEL_FORMAT,
    PATTERNS,
    PatchGrid,
    TrainConfig,
    add_version_option,
    checkpoint_name,
    fold_labels,
    read_checkpoint,
    write_checkpoint,
)


def experiment_folder(results: Path) -> Path:
    run = results / "run.json"
    return Path(json.loads(run.read_text())["experiment"]) if run.exists() else results / "tune"


def trial_checkpoint(results: Path, trial_id: str) -> Path:
    """The latest checkpoint folder of a trial in the study's experiment folder."""
    folders = sorted(experiment_folder(results).glob(f"*_{trial_id}_*/checkpoint_*"))
    if not folders:
        raise FileNotFoundError(
            f"no checkpoint of trial {trial_id} in {experiment_folder(results)}; only the best "
            "trials keep theirs (StudyConfig.keep_checkpoints)"
        )
    return folders[-1]


def fold_model(checkpoint: Path, fold: str) -> dict:
    """The model weights of one fold in a trial's checkpoint folder."""
    return read_checkpoint(checkpoint / checkpoint_name(fold))["model"]


def trial_config(row: pd.Series) -> TrainConfig:
    """The TrainConfig of a row of trials.parquet. A null field (one the trial's balancer
    does not read) keeps its default."""
    values = {f.name: _native(row[f.name]) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in values.items() if not _is_null(v)})


def choose_trial(trials: pd.DataFrame, which: str) -> pd.Series:
    if which == "best":
        finished = trials[trials.status == "completed"]
        if finished.empty:
            raise ValueError("the study has no completed trial to export")
        return finished.loc[finished.cv_score.idxmax()]
    chosen = trials[trials.trial_id == which]
    if chosen.empty:
        raise ValueError(f"no trial {which!r}; trials: {', '.join(trials.trial_id)}")
    return chosen.iloc[0]


def export(results: str | Path, out: str | Path, trial: str = "best") -> Path:
    results, out = Path(results), Path(out)
    trials = pd.read_parquet(results / "trials.parquet")
    row = choose_trial(trials, trial)
    config = trial_config(row)
    checkpoint = trial_checkpoint(results, row.trial_id)
    meta = json.loads((checkpoint / "trial.json").read_text())
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    study = json.loads((results / "study.json").read_text())
    folds = fold_labels(config.num_folds, study.get("repeats", 1))
    for fold in folds:
        write_checkpoint(fold_model(checkpoint, fold), tmp / checkpoint_name(fold))
    model = {
        "format": MODEL_FORMAT,
        "study": study["name"],
        "trial_id": row.trial_id,
        "status": row.status,
        "epoch": meta["epoch"],
        "config": dataclasses.asdict(config),
        "folds": list(folds),
        "cv": {k: _plain(v) for k, v in row.items() if str(k).startswith("cv_")},
        "store_hash": meta.get("store_hash"),
        "classes": {"pattern": list(PATTERNS), "intensity": list(INTENSITIES)},
        "patch": {"size": config.image_size, "grid": dataclasses.asdict(PatchGrid())},
        "versions": meta.get("versions", {}),
    }
    (tmp / "model.json").write_text(json.dumps(model, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _plain(value):
    return None if pd.isna(value) else float(value)


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _native(value):
    """A Parquet cell as a plain Python value: numpy scalars and arrays become int/list."""
    if isinstance(value, np.ndarray):
        return [_native(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.export",
        description="Export one trial of a study (its fold models and model.json) for "
        "python -m mtl.predict.",
    )
    parser.add_argument("results", help="the study's results folder, RESULTS/NAME")
    parser.add_argument("--trial", default="best", help="best (default: the completed trial "
                        "with the best cross-validated score) or a trial id")  # fmt: skip
    parser.add_argument("--out", required=True, help="the model folder to write")
    add_version_option(parser)
    args = parser.parse_args(argv)
    try:
        out = export(args.results, args.out, args.trial)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {json.loads((out / 'model.json').read_text())['trial_id']} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
