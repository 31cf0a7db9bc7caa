"""Data: the patch store, the synthetic generator, patient-level folds, batches."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mtl.data.augment import AUGMENTATIONS, build_augmentation
from mtl.data.dataset import EpochBatches, PatchDataset, collate_batch, make_loader
from mtl.data.folds import (
    FOLD_SCHEMES,
    assign_folds,
    fold_labels,
    fold_names,
    holdout_patients,
    reference_patients,
    split_label,
)
from mtl.data.grid import PatchGrid
from mtl.data.importers import ImportProblems, import_patches, import_specimens
from mtl.data.store import INDEX_COLUMNS, PatchStore, StoreWriter, open_store
from mtl.data.synthetic import SynthSpec, generate

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
