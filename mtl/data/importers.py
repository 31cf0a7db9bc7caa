"""Importers: I3A task-2 images on disk -> a patch store (`python -m mtl.data`).

Two layouts (`shared/seed-data/README.md`):

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
import csv
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mtl.data.grid import PatchGrid
from mtl.data.store import PatchStore, StoreWriter
from mtl.labels import parse_intensity, parse_pattern

# progress(done, total): `done` more patches are finished, out of `total`.
Progress = Callable[[int, int], None]

PATCH_NAME = re.compile(r"(\d+)_p(\d+)_patch(\d+)\.tiff?", re.IGNORECASE)
SPECIMEN_NAME = re.compile(r"(\d+)_p(\d+)\.tiff?", re.IGNORECASE)
ORIGINAL_GRID = PatchGrid()  # 5 x 3 patches of 384 on a 1388 x 1040 specimen


class ImportProblems(ValueError):
    """Everything wrong with an import's input: `.problems`, one message per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        count = len(self.problems)
        heading = f"{count} problem{'s' if count != 1 else ''} with the input"
        super().__init__("\n  ".join([heading + ":", *self.problems]))


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


# --- reading label tables --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Row:
    """One row of a label table (or one specimen it names); None where a field did not parse."""

    csv: str  # the table's file name, for messages
    line: int
    key: object  # what must be unique between rows: a patch, a specimen or a patient
    patient: int | None
    specimen: int | None = None
    patch: int | None = None
    image: str = ""
    mask: str = ""
    pattern: str | None = None
    intensity: str | None = None

    @property
    def where(self) -> str:
        return f"{self.csv} line {self.line}: "


def _read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row."""
    if not path.is_file():
        raise ImportProblems([f"{path}: label table not found"])
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ImportProblems([f"{path}: not a readable CSV file ({error})"]) from None
    if not rows:
        raise ImportProblems([f"{path}: no rows"])
    return rows


def _labels(pattern: str, intensity: str, where: str, problems: list[str]) -> dict:
    """{'pattern': ..., 'intensity': ...}, leaving out (and reporting) what does not parse."""
    parsed = {}
    for field, parse, text in (
        ("pattern", parse_pattern, pattern),
        ("intensity", parse_intensity, intensity),
    ):
        try:
            parsed[field] = parse(text)
        except ValueError as error:
            problems.append(f"{where}{error}")
    return parsed


def _patch_rows(path: Path, problems: list[str]) -> list[_Row]:
    """The original headerless CSV: image,mask,pattern,intensity, one row per patch."""
    rows = []
    for number, fields in _read_csv(path):
        where = f"{path.name} line {number}: "
        if number == 1 and fields[0].strip().lower() == "image":
            continue  # tolerate a header row, although the original has none
        if len(fields) != 4:
            problems.append(f"{where}{len(fields)} fields; expected image,mask,pattern,intensity")
            continue
        image, mask = fields[0].strip(), fields[1].strip()
        if not mask:
            problems.append(f"{where}no mask named for {image}")
        labels = _labels(fields[2], fields[3], where, problems)
        match = PATCH_NAME.fullmatch(Path(image).name)
        if match is None:
            problems.append(f"{where}{image!r} is not named {{patient:05d}}_p{{s}}_patch{{k}}.tif")
            rows.append(_Row(csv=path.name, line=number, key=image, patient=None, image=image))
            continue
        patient, specimen, patch = map(int, match.groups())
        rows.append(
            _Row(
                csv=path.name,
                line=number,
                key=(patient, specimen, patch),
                patient=patient,
                specimen=specimen,
                patch=patch,
                image=image,
                mask=mask,
                **labels,
            )
        )
    return rows


def _table_rows(path: Path, problems: list[str]) -> list[_Row]:
    """A label table with a header: pattern, intensity and image (+ mask) or patient."""
    lines = _read_csv(path)
    header = [cell.strip().lower() for cell in lines[0][1]]
    if not {"pattern", "intensity", "image", "patient"} & set(header):
        return _patch_rows(path, problems)  # no header: the original patch CSV
    column = {name: header.index(name) for name in set(header)}
    if not {"pattern", "intensity"} <= column.keys() or not {"image", "patient"} & column.keys():
        raise ImportProblems(
            [
                f"{path.name} line 1: the header needs pattern, intensity and an image or "
                f"patient column; it has {', '.join(header)}"
            ]
        )
    rows = []
    for number, fields in lines[1:]:
        where = f"{path.name} line {number}: "
        if len(fields) != len(header):
            problems.append(f"{where}{len(fields)} fields; the header has {len(header)}")
            continue
        cell = {name: fields[i].strip() for name, i in column.items()}
        labels = _labels(cell["pattern"], cell["intensity"], where, problems)
        if "image" in cell:
            rows.append(_image_row(path.name, number, cell, labels, problems))
            continue
        try:
            patient = int(cell["patient"])
        except ValueError:
            problems.append(f"{where}patient {cell['patient']!r} is not a number")
            continue
        rows.append(_Row(csv=path.name, line=number, key=patient, patient=patient, **labels))
    return rows


def _image_row(table: str, number: int, cell: dict, labels: dict, problems: list[str]) -> _Row:
    image = cell["image"]
    row = _Row(csv=table, line=number, key=image, patient=None, image=image, **labels)
    match = SPECIMEN_NAME.fullmatch(Path(image).name)
    if match is None:
        problems.append(f"{row.where}{image!r} is not named {{patient:05d}}_p{{s}}.tif")
        return row
    patient, specimen = map(int, match.groups())
    if "patient" in cell and _int(cell["patient"]) != patient:
        problems.append(
            f"{row.where}patient {cell['patient']!r}, but {image} is of patient {patient}"
        )
    mask = cell.get("mask") or _mask_name(image)
    return replace(row, key=(patient, specimen), patient=patient, specimen=specimen, mask=mask)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _mask_name(image: str) -> str:
    path = Path(image)
    return str(path.with_name(f"{path.stem}_Mask{path.suffix}"))


def _check_rows(rows: Iterable[_Row], problems: list[str]) -> dict[int, tuple[str, str]]:
    """Duplicate rows and patients with conflicting labels -> problems; labels per patient."""
    first: dict[object, _Row] = {}
    seen: dict[int, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(list))
    table = ""
    for row in rows:
        table = row.csv
        if row.key in first:
            what = row.image or f"patient {row.patient}"
            problems.append(
                f"{row.where}duplicate row: {what} is already on line {first[row.key].line}"
            )
        first.setdefault(row.key, row)
        if row.patient is not None and row.pattern and row.intensity:
            seen[row.patient][(row.pattern, row.intensity)].append(row.line)
    for patient, labels in seen.items():
        if len(labels) > 1:
            listed = "; ".join(f"{p}/{i} on {_lines(lines)}" for (p, i), lines in labels.items())
            problems.append(f"{table}: patient {patient} has conflicting labels: {listed}")
    return {patient: next(iter(labels)) for patient, labels in seen.items()}


def _lines(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    more = f" and {len(numbers) - 5} more" if len(numbers) > 5 else ""
    return f"lines {', '.join(map(str, numbers[:5]))}{more}"


def _patch_id(patient: int | None, specimen: int | None, patch: int) -> str | None:
    return None if patient is None else f"{patient:05d}_p{specimen}_patch{patch}"


def _require_folder(src: Path, problems: list[str]) -> None:
    # Without it every file would be reported missing: say it once, with the table's problems.
    if not src.is_dir():
        raise ImportProblems([f"{src}: image folder not found", *problems])


# --- writing ---------------------------------------------------------------------------------


def _build(
    out: str | os.PathLike,
    items: Sequence[_Row],
    index: pd.DataFrame,
    side: int | None,
    patches: Callable[[_Row], list[tuple[np.ndarray, np.ndarray]]],
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
    rows = _patch_rows(index_csv, problems)
    labels = _check_rows(rows, problems)
    _require_folder(src, problems)
    side, first = (patch_size, None) if patch_size else _first_square(rows, src)
    index = _index(rows, labels, lambda row: [row.patch])

    def patches(row: _Row) -> list[tuple[np.ndarray, np.ndarray]]:
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


def _first_square(rows: list[_Row], src: Path) -> tuple[int | None, str | None]:
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
    items: list[_Row], labels: dict[int, tuple[str, str]], patches: Callable[[_Row], list[int]]
) -> pd.DataFrame:
    """The store index: one row per patch number of every item."""
    records = [
        {
            "patch_id": _patch_id(item.patient, item.specimen, k),
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
    rows = _table_rows(labels_csv, problems)
    labels = _check_rows(rows, problems)
    _require_folder(src, problems)
    specimens = _specimens(rows, src, problems)
    index = _index(specimens, labels, lambda _: range(len(grid)))

    def patches(specimen: _Row) -> list[tuple[np.ndarray, np.ndarray]]:
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


def _specimens(rows: list[_Row], src: Path, problems: list[str]) -> list[_Row]:
    """The specimen images the label rows name, sorted by patient and specimen."""
    in_src: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if any(row.key == row.patient for row in rows):  # a patient table
        for path in sorted(src.iterdir()):
            if match := SPECIMEN_NAME.fullmatch(path.name):
                in_src[int(match[1])].append((int(match[2]), path.name))
    specimens: dict[tuple[int, int], _Row] = {}
    for row in rows:
        if row.patient is None:
            continue  # its problem is reported
        if row.patch is not None:  # a row of the patch CSV
            image = f"{row.patient:05d}_p{row.specimen}.tif"
            specimen = replace(row, patch=None, image=image, mask=_mask_name(image))
            specimens.setdefault((row.patient, row.specimen), specimen)
        elif row.specimen is not None:  # a row naming a specimen image
            specimens.setdefault((row.patient, row.specimen), row)
        elif row.patient in in_src:  # a patient row: all of the patient's images
            for number, name in in_src[row.patient]:
                found = replace(row, specimen=number, image=name, mask=_mask_name(name))
                specimens.setdefault((row.patient, number), found)
        else:
            problems.append(
                f"{row.where}no specimen image of patient {row.patient} "
                f"({row.patient:05d}_p{{s}}.tif) in {src}"
            )
    return [specimens[key] for key in sorted(specimens)]
