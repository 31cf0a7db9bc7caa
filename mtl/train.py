"""Train one fold on its own: `train_fold(config, fold)` in Python, `python -m mtl.train` on
the command line (a progress bar, a line per epoch, checkpoints and epochs.parquet).

Both go through `mtl.loop.train_epochs`, the loop the study's fold workers use too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mtl.config import (
    TRAIN_PRESETS,
    TrainConfig,
    add_overrides_option,
    add_version_option,
    parse_overrides,
)
from mtl.loop import checkpoint_due, checkpoint_name, train_epochs
from mtl.schema import EpochMetrics
from mtl.tables import confusion_frame, epoch_frame, write_parquet
from mtl.trainer import open_trainer

console = Console()

COLUMNS = {  # per-epoch table: title -> (split, metric)
    "train loss": ("train", "loss"),
    "val loss": ("val", "loss"),
    "pixel": ("val", "pixel_acc"),
    "dice": ("val", "dice"),
    "pattern": ("val", "pattern_acc"),
    "pattern MCA": ("val", "pattern_mca"),
    "intensity": ("val", "intensity_acc"),
    "patient pattern": ("val", "patient_pattern_acc"),
}


def train_fold(
    config: TrainConfig,
    fold: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> Iterator[EpochMetrics]:
    """Train one fold, yielding one EpochMetrics per epoch.

    `checkpoint`: a file written by an earlier run to resume from (its later epochs are
    trained). `checkpoint_dir`: where to write `fold-<fold>.pt` every
    `config.checkpoint_every` epochs and after the last one.
    """
    trainer = open_trainer(config, fold, checkpoint)
    save = None
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / checkpoint_name(fold)
        save = lambda: trainer.save(path)  # noqa: E731
    yield from train_epochs(
        trainer, config.epochs, save=save, due=lambda epoch: checkpoint_due(config, epoch)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mtl.train",
        description="Train the multi-task U-Net on one fold of a patch store: every other fold "
        "trains, FOLD validates. Writes checkpoints (fold-FOLD.pt), epochs.parquet (the study's "
        "layout) and config.json into --out.",
    )
    parser.add_argument("--data", required=True, help="a patch store (python -m mtl.data)")
    parser.add_argument("--fold", required=True, help="the validation fold: A, B, C, ...")
    parser.add_argument(
        "--preset",
        default="original",
        choices=sorted(TRAIN_PRESETS),
        help="; ".join(
            f"{name}: {make.__doc__.split('.')[0].strip()}" for name, make in TRAIN_PRESETS.items()
        )
        + " (default: original)",
    )
    add_overrides_option(parser)
    parser.add_argument("--out", help="output folder (default: a new folder under ./runs)")
    parser.add_argument("--resume", help="a checkpoint written by an earlier run to continue from")
    add_version_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        changes = parse_overrides([*args.overrides, f"data={Path(args.data).resolve()}"])
        config = TRAIN_PRESETS[args.preset]().replace(**changes)
        trainer = open_trainer(config, args.fold, args.resume)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-fold{args.fold}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    table = Table("epoch", *COLUMNS, "s", title=f"fold {args.fold}: training and validation")
    history = []
    earlier = {"epochs": pd.DataFrame(), "confusions": pd.DataFrame()}
    for name in earlier:  # on --resume, keep the epochs before it
        if args.resume and (out / f"{name}.parquet").exists():
            frame = pd.read_parquet(out / f"{name}.parquet")
            earlier[name] = frame[frame.epoch <= trainer.epoch]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("", total=trainer.batches_per_epoch, rate="")
        started = [time.perf_counter()]

        def advance(n: int) -> None:
            done = progress.tasks[0].completed + n
            rate = done * config.batch_size / (time.perf_counter() - started[0])
            progress.update(task, advance=n, rate=f"{rate:,.0f} patches/s")

        def show(metrics: EpochMetrics) -> None:
            history.append(metrics)
            for name, frame in (
                ("epochs", epoch_frame("single", args.fold, history)),
                ("confusions", confusion_frame("single", args.fold, history)),
            ):
                frame = pd.concat([earlier[name], frame], ignore_index=True)
                write_parquet(frame, out / f"{name}.parquet", name, study=out.name)
            cells = [f"{getattr(getattr(metrics, s), m):.3f}" for s, m in COLUMNS.values()]
            table.add_row(str(metrics.epoch), *cells, f"{metrics.seconds:.0f}")
            # One line per epoch above the bar; the full table comes at the end.
            line = "  ".join(f"{name} {cell}" for name, cell in zip(COLUMNS, cells, strict=True))
            progress.console.print(f"epoch {metrics.epoch}  {line}  ({metrics.seconds:.0f} s)")
            if metrics.epoch < config.epochs:
                progress.reset(task, description=f"epoch {metrics.epoch + 1}/{config.epochs}")
                started[0] = time.perf_counter()

        progress.update(task, description=f"epoch {trainer.epoch + 1}/{config.epochs}")
        for _ in train_epochs(
            trainer,
            config.epochs,
            save=lambda: trainer.save(out / checkpoint_name(args.fold)),
            due=lambda epoch: checkpoint_due(config, epoch),
            on_epoch=show,
            progress=advance,
        ):
            pass
    console.print(table)
    console.print(f"checkpoint, epochs.parquet and confusions.parquet in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
