"""The label tables of an import: the original headerless patch CSV and a specimen label
table, read into rows that name the line they came from, and the checks on them (unknown or
conflicting labels, duplicates, names outside the I3A layout). Every problem is collected,
never raised one at a time: see `mtl/data/importers.py`.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mtl.labels import parse_intensity, parse_pattern

PATCH_NAME = re.compile(r"(\d+)_p(\d+)_patch(\d+)\.tiff?", re.IGNORECASE)
SPECIMEN_NAME = re.compile(r"(\d+)_p(\d+)\.tiff?", re.IGNORECASE)


class ImportProblems(ValueError):
    """Everything wrong with an import's input: `.problems`, one message per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        count = len(self.problems)
        heading = f"{count} problem{'s' if count != 1 else ''} with the input"
        super().__init__("\n  ".join([heading + ":", *self.problems]))


# --- reading label tables --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LabelRow:
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


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
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


def parse_labels(pattern: str, intensity: str, where: str, problems: list[str]) -> dict:
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


def read_patch_rows(path: Path, problems: list[str]) -> list[LabelRow]:
    """The original headerless CSV: image,mask,pattern,intensity, one row per patch."""
    rows = []
    for number, fields in read_csv_rows(path):
        where = f"{path.name} line {number}: "
        if number == 1 and fields[0].strip().lower() == "image":
            continue  # tolerate a header row, although the original has none
        if len(fields) != 4:
            problems.append(f"{where}{len(fields)} fields; expected image,mask,pattern,intensity")
            continue
        image, mask = fields[0].strip(), fields[1].strip()
        if not mask:
            problems.append(f"{where}no mask named for {image}")
        labels = parse_labels(fields[2], fields[3], where, problems)
        match = PATCH_NAME.fullmatch(Path(image).name)
        if match is None:
            problems.append(f"{where}{image!r} is not named {{patient:05d}}_p{{s}}_patch{{k}}.tif")
            rows.append(LabelRow(csv=path.name, line=number, key=image, patient=None, image=image))
            continue
        patient, specimen, patch = map(int, match.groups())
        rows.append(
            LabelRow(
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


def read_table_rows(path: Path, problems: list[str]) -> list[LabelRow]:
    """A label table with a header: pattern, intensity and image (+ mask) or patient."""
    lines = read_csv_rows(path)
    header = [cell.strip().lower() for cell in lines[0][1]]
    if not {"pattern", "intensity", "image", "patient"} & set(header):
        return read_patch_rows(path, problems)  # no header: the original patch CSV
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
        labels = parse_labels(cell["pattern"], cell["intensity"], where, problems)
        if "image" in cell:
            rows.append(table_image_row(path.name, number, cell, labels, problems))
            continue
        try:
            patient = int(cell["patient"])
        except ValueError:
            problems.append(f"{where}patient {cell['patient']!r} is not a number")
            continue
        rows.append(LabelRow(csv=path.name, line=number, key=patient, patient=patient, **labels))
    return rows


def table_image_row(
    table: str, number: int, cell: dict, labels: dict, problems: list[str]
) -> LabelRow:
    image = cell["image"]
    row = LabelRow(csv=table, line=number, key=image, patient=None, image=image, **labels)
    match = SPECIMEN_NAME.fullmatch(Path(image).name)
    if match is None:
        problems.append(f"{row.where}{image!r} is not named {{patient:05d}}_p{{s}}.tif")
        return row
    patient, specimen = map(int, match.groups())
    if "patient" in cell and parse_int(cell["patient"]) != patient:
        problems.append(
            f"{row.where}patient {cell['patient']!r}, but {image} is of patient {patient}"
        )
    mask = cell.get("mask") or mask_file_name(image)
    return replace(row, key=(patient, specimen), patient=patient, specimen=specimen, mask=mask)


def parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def mask_file_name(image: str) -> str:
    path = Path(image)
    return str(path.with_name(f"{path.stem}_Mask{path.suffix}"))


def check_rows(rows: Iterable[LabelRow], problems: list[str]) -> dict[int, tuple[str, str]]:
    """Duplicate rows and patients with conflicting labels -> problems; labels per patient."""
    first: dict[object, LabelRow] = {}
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
            listed = "; ".join(
                f"{p}/{i} on {format_lines(lines)}" for (p, i), lines in labels.items()
            )
            problems.append(f"{table}: patient {patient} has conflicting labels: {listed}")
    return {patient: next(iter(labels)) for patient, labels in seen.items()}


def format_lines(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    more = f" and {len(numbers) - 5} more" if len(numbers) > 5 else ""
    return f"lines {', '.join(map(str, numbers[:5]))}{more}"


def make_patch_id(patient: int | None, specimen: int | None, patch: int) -> str | None:
    return None if patient is None else f"{patient:05d}_p{specimen}_patch{patch}"


def require_folder(src: Path, problems: list[str]) -> None:
    # Without it every file would be reported missing: say it once, with the table's problems.
    if not src.is_dir():
        raise ImportProblems([f"{src}: image folder not found", *problems])
