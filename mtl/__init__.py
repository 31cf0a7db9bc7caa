"""mtl: the science of one multi-task U-Net (data, model, losses, balancers, metrics, the
training of one fold). No Ray, no Optuna.

The names below are mtl's public interface: `study`, the benches and their tests import
them from here (`from mtl import FoldTrainer`) and nothing else of mtl, which
`tests/test_layering.py` checks. The contract between the packages is the trainer
(`Trainer`, `FoldTrainer`, `train_epochs`) and what it returns (`EpochMetrics`).

Names are loaded on first use (PEP 562), so `from mtl import SCORE_METRICS` reads the
torch-free schema without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> the module that defines it
_PUBLIC = {
    # configuration
    "TrainConfig": "mtl.config",
    "original": "mtl.config",
    "small": "mtl.config",
    "tiny": "mtl.config",
    "parse_overrides": "mtl.config",
    "add_overrides_option": "mtl.config",
    "add_version_option": "mtl.config",
    "package_version": "mtl.config",
    "is_active": "mtl.config",
    "CHOICES": "mtl.config",
    # the result schema (no torch)
    "EpochMetrics": "mtl.schema",
    "SplitMetrics": "mtl.schema",
    "SCORE_METRICS": "mtl.schema",
    "CV_METRICS": "mtl.schema",
    "METRIC_LEVELS": "mtl.schema",
    "METRIC_DIRECTIONS": "mtl.schema",
    "TASKS": "mtl.schema",
    "TASK_METRICS": "mtl.schema",
    "TASK_HEADLINES": "mtl.schema",
    "ID_COLUMNS": "mtl.schema",
    "score": "mtl.schema",
    "score_metrics_at": "mtl.schema",
    "PATTERNS": "mtl.labels",
    "INTENSITIES": "mtl.labels",
    "epoch_frame": "mtl.tables",
    "order_columns": "mtl.tables",
    "write_parquet": "mtl.tables",
    "write_csv": "mtl.tables",
    "SCHEMA_VERSION": "mtl.tables",
    "SCHEMAS": "mtl.tables",
    "table_schema": "mtl.tables",
    "to_arrow": "mtl.tables",
    "confusion_matrix_cells": "mtl.schema",
    # data
    "SynthSpec": "mtl.data",
    "PatchGrid": "mtl.data",
    "build_synthetic_store": "mtl.data",
    "open_store": "mtl.data",
    "content_hash": "mtl.data.store",
    "fold_labels": "mtl.data",
    "split_label": "mtl.data",
    "holdout_patients": "mtl.data",
    "PatchDataset": "mtl.data",
    "build_augmentation": "mtl.data",
    "make_loader": "mtl.data",
    "INDEX_COLUMNS": "mtl.data",
    "StoreWriter": "mtl.data.store",
    "choose_patients": "mtl.data.synthetic",
    # the trainer contract and the one epoch loop
    "Trainer": "mtl.loop",
    "FoldTrainer": "mtl.trainer",
    "open_trainer": "mtl.trainer",
    "train_epochs": "mtl.loop",
    "ScriptedTrainer": "mtl.scripted",
    "uniform_epoch": "mtl.scripted",
    "checkpoint_due": "mtl.loop",
    "checkpoint_name": "mtl.loop",
    "read_checkpoint": "mtl.loop",
    "checkpoint_bytes": "mtl.loop",
    "write_checkpoint": "mtl.loop",
    "split_rows": "mtl.data",
    "heldout_rows": "mtl.data",
    "resolve_device": "mtl.trainer",
    "EPOCH_DEPENDENT_SCHEDULES": "mtl.config",
    "train_fold": "mtl.train",
    # memory: a fold's state counted, a training step's GPU peak measured
    "state_bytes": "mtl.memory",
    "measure_step_memory": "mtl.memory",
    # model, losses, balancers (for the benches)
    "MultiTaskUNet": "mtl.model",
    "task_losses": "mtl.losses",
    "BALANCERS": "mtl.balancing",
    "GradNorm": "mtl.balancing",
    "build_balancer": "mtl.balancing",
    "RunningSums": "mtl.metrics",
    # held-out evaluation and prediction
    "load_models": "mtl.evaluate",
    "patient_sums": "mtl.evaluate",
    "bootstrap": "mtl.evaluate",
    "MODEL_FORMAT": "mtl.predict",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mtl' has no public name {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors; at run time names load on first use
    from mtl.balancing import BALANCERS, GradNorm, build_balancer
    from mtl.config import (
        CHOICES,
        EPOCH_DEPENDENT_SCHEDULES,
        TrainConfig,
        add_overrides_option,
        add_version_option,
        is_active,
        original,
        package_version,
        parse_overrides,
        small,
        tiny,
    )
    from mtl.data import (
        INDEX_COLUMNS,
        PatchDataset,
        PatchGrid,
        SynthSpec,
        build_augmentation,
        build_synthetic_store,
        fold_labels,
        heldout_rows,
        holdout_patients,
        make_loader,
        open_store,
        split_label,
        split_rows,
    )
    from mtl.data.store import StoreWriter, content_hash
    from mtl.data.synthetic import choose_patients
    from mtl.evaluate import bootstrap, load_models, patient_sums
    from mtl.labels import INTENSITIES, PATTERNS
    from mtl.loop import (
        Trainer,
        checkpoint_bytes,
        checkpoint_due,
        checkpoint_name,
        read_checkpoint,
        train_epochs,
        write_checkpoint,
    )
    from mtl.losses import task_losses
    from mtl.memory import measure_step_memory, state_bytes
    from mtl.metrics import RunningSums
    from mtl.model import MultiTaskUNet
    from mtl.predict import MODEL_FORMAT
    from mtl.schema import (
        CV_METRICS,
        ID_COLUMNS,
        METRIC_DIRECTIONS,
        METRIC_LEVELS,
        SCORE_METRICS,
        TASK_HEADLINES,
        TASK_METRICS,
        TASKS,
        EpochMetrics,
        SplitMetrics,
        confusion_matrix_cells,
        score,
        score_metrics_at,
    )
    from mtl.scripted import ScriptedTrainer, uniform_epoch
    from mtl.tables import (
        SCHEMA_VERSION,
        SCHEMAS,
        epoch_frame,
        order_columns,
        table_schema,
        to_arrow,
        write_csv,
        write_parquet,
    )
    from mtl.train import train_fold
    from mtl.trainer import (
        FoldTrainer,
        open_trainer,
        resolve_device,
    )
