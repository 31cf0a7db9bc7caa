"""Importers: I3A task-2 images on disk -> a patch store (`python -m mtl.data`).

Two layouts, those of the I3A task-2 distribution:

- pre-cut patches `{patient:05d}_p{s}_patch{k}.tif` with masks `..._Mask.tif`, listed in the
  original headerless CSV `image,mask,pattern,intensity` (`import_patches`);
- full specimens `{patient:05d}_p{s}.tif` with masks `{patient:05d}_p{s}_Mask.tif` and a label
  table, cut into the patches of a PatchGrid (`import_specimens`).

Every input is checked in the same pass that writes the store into StoreWriter's temporary
folder. Each problem is collected with the CSV line or file it concerns, and one
ImportProblems lists them all at the end: a lab fixing a broken export wants the whole list
at once, not one error per run. The partial store is then removed, so a failed import
leaves nothing behind and never touches an existing store.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mtl.data.grid import PatchGrid
from mtl.data.label_tables import (
    SPECIMEN_NAME,
    ImportProblems,
    LabelRow,
    check_rows,
    make_patch_id,
    mask_file_name,
    read_patch_rows,
    read_table_rows,
    require_folder,
)
from mtl.data.store import PatchStore, StoreWriter

# progress(done, total): `done` more patches are finished, out of `total`.
Progress = Callable[[int, int], None]

ORIGINAL_GRID = PatchGrid()  # 5 x 3 patches of 384 on a 1388 x 1040 specimen


# --- reading images --------------------------------------------------------------------------


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit grey image; RGB or RGBA files are converted to grey.

    Raises ValueError saying what is wrong: not decodable, or not 8-bit.
    """
    # OpenCV logs libtiff's complaints about a corrupt file to stderr; our message says it.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        image = _read_with_pil(path)  # OpenCV's TIFF codec lacks some compressions
    if image.dtype != np.uint8:
        raise ValueError(f"has {image.dtype} pixels; only 8-bit images are supported")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (1, 2):  # grey, or grey + alpha
            image = image[:, :, 0]
        elif channels in (3, 4):  # at least one real I3A file is 4-channel
            code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
            image = cv2.cvtColor(image, code)
        else:
            raise ValueError(f"has {channels} channels; expected grey, RGB or RGBA")
    return np.ascontiguousarray(image)


def _read_with_pil(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": our message says it
            with Image.open(path) as image:
                if image.mode in ("1", "P", "LA", "RGB", "RGBA"):
                    image = image.convert("L")
                return np.asarray(image)  # other modes (16-bit, float) fail the 8-bit check
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... on bad files
        raise ValueError(f"is unreadable or corrupt ({error})") from None


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"  # width x height, as image sizes are quoted


def _read(path: Path, where: str, problems: list[str]) -> np.ndarray | None:
    if not path.is_file():
        problems.append(f"{where}{path.name} not found in {path.parent}")
        return None
    try:
        return read_grey(path)
    except ValueError as error:
        problems.append(f"{where}{path.name} {error}")
        return None


def _load_pair(
    image_path: Path, mask_path: Path, where: str, problems: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """A grey image and its 0/1 mask, or None after recording what is wrong with them."""
    image = _read(image_path, where, problems)
    mask = _read(mask_path, where, problems)
    if image is None or mask is None:
        return None
    if mask.shape != image.shape:
        problems.append(
            f"{where}mask {mask_path.name} is {_size(mask)}, "
            f"its image {image_path.name} is {_size(image)}"
        )
        return None
    values = set(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
        problems.append(
            f"{where}mask {mask_path.name} holds the values {shown}; "
            "expected 0 and 255 (or 0 and 1)"
        )
        return None
    return image, (mask > 0).astype(np.uint8)


# --- writing ---------------------------------------------------------------------------------


def _build(
    out: str | os.PathLike,
    items: Sequence[LabelRow],
    index: pd.DataFrame,
    side: int | None,
    patches: Callable[[LabelRow], list[tuple[np.ndarray, np.ndarray]]],
    problems: list[str],
    *,
    force: bool,
    progress: Progress | None,
    meta: dict,
) -> PatchStore:
    """Write the `patches(item)` of every item into a new store; commit only if all is well.

    Every item fills len(index) // len(items) consecutive slots; `patches` returns them, or
    nothing after recording a problem.
    """
    if not items:
        raise ImportProblems(problems or ["nothing to import: the label table names no images"])
    per_item = len(index) // len(items)
    # Without a known patch size (no readable square patch) only the checks run.
    writer = StoreWriter(out, len(index), side, force=force) if side else contextlib.nullcontext()
    with writer:
        for i, item in enumerate(items):
            for k, (image, mask) in enumerate(patches(item)):
                writer.write(i * per_item + k, image, mask)
            if progress is not None:
                progress(per_item, len(index))
        if problems:
            raise ImportProblems(problems)
        return writer.commit(index, **meta)


# --- pre-cut patches -------------------------------------------------------------------------


def import_patches(
    src: str | os.PathLike,
    index_csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    patch_size: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> PatchStore:
    """Import pre-cut patches listed in the original headerless CSV into a store at `out`.

    patient, specimen and patch come from the file names, the labels from the CSV (stripped,
    case-insensitive). All patches are square and of one size: `patch_size`, or else that of
    the first readable patch. The store keeps the CSV's order.
    Raises ImportProblems listing every problem found; FileExistsError if `out` exists and
    `force` is not set.
    """
    src, index_csv = Path(src), Path(index_csv)
    problems: list[str] = []
    rows = read_patch_rows(index_csv, problems)
    labels = check_rows(rows, problems)
    require_folder(src, problems)
    side, first = (patch_size, None) if patch_size else _first_square(rows, src)
    index = _index(rows, labels, lambda row: [row.patch])

    def patches(row: LabelRow) -> list[tuple[np.ndarray, np.ndarray]]:
        if row.patient is None or not row.mask:
            return []  # an unparsable name or no mask, already reported
        pair = _load_pair(src / row.image, src / row.mask, row.where, problems)
        if pair is None:
            return []
        if pair[0].shape != (side, side):
            if side is None:
                expected = "patches are square"
            elif first is None:
                expected = f"expected the patch size asked for, {side}x{side}"
            else:
                expected = f"expected {side}x{side} like the first square patch, {first}"
            problems.append(f"{row.where}{row.image} is {_size(pair[0])}; {expected}")
            return []
        return [pair]

    meta = {"source": "i3a-patches", "imported_from": {"src": str(src), "index": str(index_csv)}}
    return _build(
        out, rows, index, side, patches, problems, force=force, progress=progress, meta=meta
    )


def _first_square(rows: list[LabelRow], src: Path) -> tuple[int | None, str | None]:
    """Side and name of the first readable square patch: the size all others must have."""
    for row in rows:
        if not (src / row.image).is_file():
            continue
        try:
            image = read_grey(src / row.image)
        except ValueError:
            continue  # reported when its row is loaded
        if image.shape[0] == image.shape[1]:
            return image.shape[0], row.image
    return None, None


def _index(
    items: list[LabelRow],
    labels: dict[int, tuple[str, str]],
    patches: Callable[[LabelRow], list[int]],
) -> pd.DataFrame:
    """The store index: one row per patch number of every item."""
    records = [
        {
            "patch_id": make_patch_id(item.patient, item.specimen, k),
            "patient": item.patient,
            "specimen": item.specimen,
            "patch": k,
            "pattern": labels.get(item.patient, (None, None))[0],
            "intensity": labels.get(item.patient, (None, None))[1],
            "source": item.image,
        }
        for item in items
        for k in patches(item)
    ]
    return pd.DataFrame.from_records(records)


# --- full specimens --------------------------------------------------------------------------


def import_specimens(
    src: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    grid: PatchGrid = ORIGINAL_GRID,
    force: bool = False,
    progress: Progress | None = None,
) -> PatchStore:
    """Cut full specimen images into the patches of `grid` and store them at `out`.

    The label table is a CSV with a header holding `pattern`, `intensity` and either `image`
    (a specimen file name; an optional `mask` column names its mask) or `patient` (then every
    `{patient:05d}_p{s}.tif` of the patient in `src` is imported); or the original headerless
    patch CSV, whose rows name the specimens. Labels must be constant within a patient.
    An image must cover the grid; a larger one contributes its top-left
    grid.width x grid.height. The store is ordered by patient, specimen and patch.
    Raises ImportProblems listing every problem found; FileExistsError if `out` exists and
    `force` is not set.
    """
    src, labels_csv = Path(src), Path(labels_csv)
    problems: list[str] = []
    rows = read_table_rows(labels_csv, problems)
    labels = check_rows(rows, problems)
    require_folder(src, problems)
    specimens = _specimens(rows, src, problems)
    index = _index(specimens, labels, lambda _: range(len(grid)))

    def patches(specimen: LabelRow) -> list[tuple[np.ndarray, np.ndarray]]:
        pair = _load_pair(src / specimen.image, src / specimen.mask, specimen.where, problems)
        if pair is None:
            return []
        image, mask = pair
        if image.shape[0] < grid.height or image.shape[1] < grid.width:
            problems.append(
                f"{specimen.where}{specimen.image} is {_size(image)}, smaller than the "
                f"{grid.cols}x{grid.rows} grid of {grid.size}-pixel patches "
                f"({grid.width}x{grid.height})"
            )
            return []
        return [(grid.cut(image, k), grid.cut(mask, k)) for k in range(len(grid))]

    meta = {
        "source": "i3a-specimens",
        "imported_from": {"src": str(src), "labels": str(labels_csv)},
        "grid": asdict(grid),
    }
    return _build(
        out,
        specimens,
        index,
        grid.size,
        patches,
        problems,
        force=force,
        progress=progress,
        meta=meta,
    )


def _specimens(rows: list[LabelRow], src: Path, problems: list[str]) -> list[LabelRow]:
    """The specimen images the label rows name, sorted by patient and specimen."""
    in_src: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if any(row.key == row.patient for row in rows):  # a patient table
        for path in sorted(src.iterdir()):
            if match := SPECIMEN_NAME.fullmatch(path.name):
                in_src[int(match[1])].append((int(match[2]), path.name))
    specimens: dict[tuple[int, int], LabelRow] = {}
    for row in rows:
        if row.patient is None:
            continue  # its problem is reported
        if row.patch is not None:  # a row of the patch CSV
            image = f"{row.patient:05d}_p{row.specimen}.tif"
            specimen = replace(row, patch=None, image=image, mask=mask_file_name(image))
            specimens.setdefault((row.patient, row.specimen), specimen)
        elif row.specimen is not None:  # a row naming a specimen image
            specimens.setdefault((row.patient, row.specimen), row)
        elif row.patient in in_src:  # a patient row: all of the patient's images
            for number, name in in_src[row.patient]:
                found = replace(row, specimen=number, image=name, mask=mask_file_name(name))
                specimens.setdefault((row.patient, number), found)
        else:
            problems.append(
                f"{row.where}no specimen image of patient {row.patient} "
                f"({row.patient:05d}_p{{s}}.tif) in {src}"
            )
    return [specimens[key] for key in sorted(specimens)]
