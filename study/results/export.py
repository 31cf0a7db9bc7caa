"""`python -m study.results.export RESULTS/NAME [--trial best|ID] --out MODEL_DIR`.

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyarrow import fs as pafs

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
from study.results.rebuild import run_files
from study.storage import filesystem_and_path

if TYPE_CHECKING:  # Ray is imported when a checkpoint is looked up: --help stays quick
    from ray.tune import Checkpoint


def trial_checkpoints(results: Path) -> dict[str, Checkpoint]:
    """The latest checkpoint of every trial of the study in RESULTS that has one, by trial id,
    wherever its Ray experiment is (run.json's: a local folder, file://, s3://, gs://), as
    Ray Checkpoints on the experiment's filesystem.

    Tune names a trial's folder TRAINABLE_TRIALID_N_CONFIG_DATE and its checkpoints
    checkpoint_NNNNNN (zero-padded: the last in name order is the latest); the trial ids
    are those of trials.parquet.
    """
    from ray.tune import Checkpoint

    filesystem, root = filesystem_and_path(run_files(results)[0])
    trial_ids = pd.read_parquet(results / "trials.parquet", columns=["trial_id"]).trial_id
    latest = {}
    for trial_folder in _folders(filesystem, root):
        trial_id = next((t for t in trial_ids if f"_{t}_" in trial_folder.base_name), None)
        if trial_id is None:
            continue
        inside = _folders(filesystem, trial_folder.path)
        saved = [f.path for f in inside if f.base_name.startswith("checkpoint_")]
        if saved:
            latest[trial_id] = Checkpoint(path=saved[-1], filesystem=filesystem)
    return latest


def _folders(filesystem: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The folders in PATH on `filesystem`, by name (none when PATH does not exist)."""
    found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted((f for f in found if f.type == pafs.FileType.Directory), key=lambda f: f.path)


def trial_checkpoint(results: Path, trial_id: str) -> Checkpoint:
    """The latest checkpoint of a trial of the study in RESULTS (trial_checkpoints): its
    `as_directory()` is a local folder, a temporary copy when the experiment is in a bucket.
    FileNotFoundError naming the trials that have one when this trial has none."""
    checkpoints = trial_checkpoints(Path(results))
    if trial_id not in checkpoints:
        raise FileNotFoundError(
            f"trial {trial_id} has no checkpoint in {run_files(Path(results))[0]} (only the "
            "best N trials keep theirs: --keep-checkpoints); trials with a checkpoint: "
            f"{', '.join(sorted(checkpoints)) or 'none'}"
        )
    return checkpoints[trial_id]


def fold_model(checkpoint: str | Path, fold: str) -> dict:
    """The model weights of one fold in a trial's checkpoint, a local folder (as_directory)."""
    return read_checkpoint(Path(checkpoint) / checkpoint_name(fold))["model"]


def trial_config(row: pd.Series) -> TrainConfig:
    """The TrainConfig of a row of trials.parquet. A null field (one the trial's balancer
    does not read) keeps its default."""
    values = {f.name: _native(row[f.name]) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in values.items() if not _is_null(v)})


def choose_trial(trials: pd.DataFrame, which: str) -> pd.Series:
    if which == "best":
        # A single-task baseline has no score (NaN): never the best.
        finished = trials[(trials.status == "completed") & trials.cv_score.notna()]
        if finished.empty:
            raise ValueError("the study has no completed trial with a score to export")
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
    study = json.loads((results / "study.json").read_text())
    folds = fold_labels(config.num_folds, study.get("repeats", 1))
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # From a bucket, the checkpoint is downloaded to a temporary folder, removed after.
    with trial_checkpoint(results, row.trial_id).as_directory() as checkpoint:
        meta = json.loads((Path(checkpoint) / "trial.json").read_text())
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
        prog="python -m study.results.export",
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
