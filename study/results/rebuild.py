"""Rebuilding a study's tables from its Ray experiment and fold logs, and its command line:
`python -m study.results rebuild RESULTS/NAME`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mtl import (
    TrainConfig,
    add_version_option,
)
from study.results.files import write_tables
from study.results.foldlog import FoldLogReader
from study.results.tables import TrialTables, record, study_tables


def run_files(folder: Path) -> tuple[str, str]:
    """(Ray's experiment folder, the fold log's root) of the study in FOLDER, from run.json
    (they live elsewhere with --storage s3://...)."""
    run = folder / "run.json"
    experiment = json.loads(run.read_text())["experiment"] if run.exists() else str(folder / "tune")
    return experiment, experiment.rsplit("/", 1)[0]


def driver_provenance(study_file: Mapping) -> dict:
    """The provenance every trial row repeats from study.json: the data, the last command."""
    provenance = study_file.get("provenance", {})
    runs = provenance.get("runs") or [{}]
    return {
        "store_hash": provenance.get("store_hash"),
        "store_path": provenance.get("store_path"),
        "command": runs[-1].get("command"),
    }


def rebuild(folder: str | os.PathLike) -> TrialTables:
    """Rebuild a study's Parquet tables from its Ray experiment and fold logs."""
    from ray.tune import ExperimentAnalysis

    folder = Path(folder)
    study = json.loads((folder / "study.json").read_text())
    base = TrainConfig.from_dict(study["train"])
    experiment, root = run_files(folder)
    analysis = ExperimentAnalysis(experiment)
    fold_logs = FoldLogReader(root)
    # Tune's own reader of the experiment (local or remote); the trials' files are read from
    # the storage, where fit() left them.
    records = [record(t, fold_logs) for t in analysis.trials]
    tables = study_tables(records, base, tuple(study["score_metrics"]), driver_provenance(study))
    write_tables(folder, tables, study["name"])
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.results",
        description="Study result tables. `rebuild RESULTS/NAME` rewrites epochs.parquet, "
        "trials.parquet and confusions.parquet from the study's Ray experiment and fold logs.",
    )
    parser.add_argument("command", choices=["rebuild"])
    parser.add_argument("folder", help="the study's results folder, RESULTS/NAME")
    add_version_option(parser)
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "study.json").exists():
        print(f"error: {args.folder} is not a study folder (no study.json)", file=sys.stderr)
        return 2
    tables = rebuild(args.folder)
    print(f"{args.folder}: {len(tables.trials)} trials, {len(tables.epochs)} epoch rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
