"""The patch store: one folder per dataset that every trial memory-maps.

    images.npy     uint8 (N, S, S), grey patches, pre-decoded (no per-sample decoding)
    masks.npy      uint8 (N, S, S), 0 = background, 1 = cell
    index.parquet  one row per patch: patch_id, patient, specimen, patch, pattern, intensity
    store.json     format version, patch size, counts and a content hash

A store is built in a temporary sibling folder and renamed into place at the end, so a
failed or interrupted build never leaves a half-written store behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mtl.labels import INTENSITIES, PATTERNS

FORMAT_VERSION = 1
INDEX_COLUMNS = ("patch_id", "patient", "specimen", "patch", "pattern", "intensity")


class PatchStore:
    """Read access to a store: `.index`, `len(store)`, `store[i] -> (image, mask)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        meta_file = self.path / "store.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a patch store (no store.json)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_file}: format version {self.meta.get('format_version')}, "
                f"this code reads {FORMAT_VERSION}; rebuild the store"
            )
        self.index = pd.read_parquet(self.path / "index.parquet")
        # Checked here, in the driver, before any trial: a truncated array would otherwise
        # surface as a crash in a data-loader worker minutes into training.
        shape = (len(self.index), self.size, self.size)
        self.images = _open_array(self.path / "images.npy", shape)
        self.masks = _open_array(self.path / "masks.npy", shape)

    def verify(self) -> None:
        """Recompute the content hash (reads every byte); ValueError when it differs."""
        found = content_hash(self.path, self.index)
        if found != self.content_hash:
            raise ValueError(
                f"{self.path}: content hash {found}, but store.json records "
                f"{self.content_hash}: the store was changed or damaged; rebuild it"
            )

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.images[i]), np.asarray(self.masks[i])


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map a uint8 .npy array after checking its header and length against `shape`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the store")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            found, _, dtype = read_header(f)
        except ValueError as error:
            raise ValueError(f"{path} is not a readable .npy array: {error}") from None
        offset = f.tell()
    if tuple(found) != shape or dtype != np.uint8:
        raise ValueError(
            f"{path} holds {dtype} {tuple(found)}, but the store's index promises uint8 {shape}"
        )
    expected = offset + int(np.prod(shape))
    size = path.stat().st_size
    if size < expected:
        raise ValueError(
            f"{path} is truncated: {size:,} bytes of {expected:,}; rebuild or re-copy the store"
        )
    return np.load(path, mmap_mode="r")


def open_store(path: str | os.PathLike) -> PatchStore:
    return PatchStore(path)


class StoreWriter:
    """Fills a new store patch by patch, then `commit()` renames it into place.

    Used as a context manager: leaving the block with an exception removes the partial store.
    """

    def __init__(self, out: str | os.PathLike, count: int, size: int, *, force: bool = False):
        self.out = Path(out)
        if self.out.exists() and not force:
            raise FileExistsError(f"{self.out} exists; pass force=True (--force) to replace it")
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.size, self.force = size, force
        shape = (count, size, size)
        try:
            self.images = np.lib.format.open_memmap(self.tmp / "images.npy", "w+", np.uint8, shape)
            self.masks = np.lib.format.open_memmap(self.tmp / "masks.npy", "w+", np.uint8, shape)
        except BaseException:  # e.g. a full disk: leave nothing behind
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, i: int, image: np.ndarray, mask: np.ndarray) -> None:
        if image.shape != (self.size, self.size) or mask.shape != image.shape:
            raise ValueError(f"patch {i}: expected {self.size}x{self.size}, got {image.shape}")
        self.images[i] = image
        self.masks[i] = mask

    def commit(self, index: pd.DataFrame, **extra: object) -> PatchStore:
        """Write index and metadata, then move the finished store to its place."""
        _check_index(index, len(self.images))
        self.images.flush()
        self.masks.flush()
        del self.images, self.masks  # close the memory maps before the rename
        index = index.reset_index(drop=True)
        index.to_parquet(self.tmp / "index.parquet", index=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "size": self.size,
            "patches": len(index),
            "patients": int(index.patient.nunique()),
            "patterns": index.pattern.value_counts().reindex(PATTERNS, fill_value=0).to_dict(),
            "intensities": index.intensity.value_counts()
            .reindex(INTENSITIES, fill_value=0)
            .to_dict(),
            "content_hash": content_hash(self.tmp, index),
            **extra,
        }
        meta = json.loads(json.dumps(meta, default=int))  # numpy ints -> plain ints
        (self.tmp / "store.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(self.tmp, self.out, force=self.force)
        return PatchStore(self.out)


def _check_index(index: pd.DataFrame, count: int) -> None:
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing}")
    if len(index) != count:
        raise ValueError(f"index has {len(index)} rows for {count} patches")
    if index.patch_id.duplicated().any():
        raise ValueError(
            f"duplicate patch ids, e.g. {index.patch_id[index.patch_id.duplicated()].iloc[0]}"
        )


def content_hash(folder: Path, index: pd.DataFrame) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in ("images.npy", "masks.npy"):
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    digest.update(index[list(INDEX_COLUMNS)].to_csv(index=False).encode())
    return digest.hexdigest()


def _replace_dir(tmp: Path, out: Path, *, force: bool) -> None:
    if out.exists():
        if not force:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{out} appeared while building; not overwriting it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
