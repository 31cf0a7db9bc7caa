"""Data: the patch store, the synthetic generator, patient-level folds, batches.

The batches' names (augment.py, dataset.py: torch and albumentations) load on first use, so
that making, importing and checking a store (`python -m mtl.data`) does not import torch.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mtl.data.folds import (
    FOLD_SCHEMES,
    assign_folds,
    fold_labels,
    fold_names,
    heldout_rows,
    holdout_patients,
    reference_patients,
    split_label,
    split_rows,
)
from mtl.data.grid import PatchGrid
from mtl.data.importers import ImportProblems, import_patches, import_specimens
from mtl.data.store import INDEX_COLUMNS, PatchStore, StoreWriter, open_store
from mtl.data.synthetic import SynthSpec, generate

if TYPE_CHECKING:
    from mtl.data.augment import AUGMENTATIONS, build_augmentation
    from mtl.data.dataset import EpochBatches, PatchDataset, collate_batch, make_loader

# name -> the module that defines it, imported on first use (PEP 562)
_BATCHES = {
    "AUGMENTATIONS": "mtl.data.augment",
    "build_augmentation": "mtl.data.augment",
    "EpochBatches": "mtl.data.dataset",
    "PatchDataset": "mtl.data.dataset",
    "collate_batch": "mtl.data.dataset",
    "make_loader": "mtl.data.dataset",
}

__all__ = [
    "AUGMENTATIONS",
    "EpochBatches",
    "build_augmentation",
    "make_loader",
    "FOLD_SCHEMES",
    "ImportProblems",
    "INDEX_COLUMNS",
    "PatchDataset",
    "PatchGrid",
    "PatchStore",
    "StoreWriter",
    "SynthSpec",
    "assign_folds",
    "build_synthetic_store",
    "collate_batch",
    "fold_labels",
    "fold_names",
    "holdout_patients",
    "split_label",
    "split_rows",
    "heldout_rows",
    "import_patches",
    "import_specimens",
    "open_store",
    "reference_patients",
]


def build_synthetic_store(
    out: str | os.PathLike, spec: SynthSpec, *, force: bool = False, progress=None
) -> PatchStore:
    """Generate `spec` into a new store at `out` (atomically). `progress(n)` per patch."""
    rows = []
    with StoreWriter(Path(out), spec.num_patches, spec.size, force=force) as writer:
        for i, (row, image, mask) in enumerate(generate(spec)):
            writer.write(i, image, mask)
            rows.append(row)
            if progress is not None:
                progress(1)
        return writer.commit(
            pd.DataFrame(rows, columns=list(INDEX_COLUMNS)),
            source="synthetic",
            synthetic={"patients": spec.patients, "specimens": spec.specimens, "seed": spec.seed},
        )


def __getattr__(name: str):
    if name in _BATCHES:
        value = getattr(importlib.import_module(_BATCHES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtl.data' has no attribute {name!r}")
