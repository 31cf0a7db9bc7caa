"""`python -m mtl.data`: build patch stores (import or synthesise) and describe them.

    python -m mtl.data import-patches SRC --index CSV OUT
    python -m mtl.data import-specimens SRC --labels CSV OUT
    python -m mtl.data synth OUT --patients 60 --size 64 --seed 0
    python -m mtl.data synth-i3a OUT --patients 5 [--patches]
    python -m mtl.data info STORE

Exit status: 0 on success, 1 when the input or the output folder is wrong (every problem is
printed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mtl.config import add_version_option
from mtl.data import build_synthetic_store
from mtl.data.folds import FOLD_SCHEMES, assign_folds
from mtl.data.grid import PatchGrid
from mtl.data.importers import ORIGINAL_GRID as ORIGINAL
from mtl.data.importers import ImportProblems, import_patches, import_specimens
from mtl.data.store import PatchStore, open_store
from mtl.data.synthetic import SynthSpec, write_i3a_layout
from mtl.labels import INTENSITIES, PATTERNS


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, parser)
    except ImportProblems as error:
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        # The count comes last, where it is seen after a long list has scrolled by.
        count = len(error.problems)
        plural = "s" if count != 1 else ""
        print(
            f"error: {count} problem{plural} with the input; nothing was written", file=sys.stderr
        )
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtl.data",
        description="Build a patch store (images, masks and a Parquet index) and describe it.",
        epilog="Exit status: 0 done, 1 bad input or output folder (all problems are "
        "printed, nothing is written), 2 usage error.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    patches = commands.add_parser(
        "import-patches",
        help="import pre-cut patches listed in the original headerless CSV",
        description="Import pre-cut I3A patches {patient:05d}_p{s}_patch{k}.tif with their "
        "masks, listed in the original headerless CSV image,mask,pattern,intensity. "
        "patient, specimen and patch number come from the file names; labels are stripped "
        "and matched case-insensitively. Every input is checked first: all problems are "
        "printed and nothing is written if there is any.",
    )
    patches.add_argument("src", metavar="SRC", help="folder holding the patch and mask TIFFs")
    patches.add_argument(
        "--index", required=True, metavar="CSV", help="the headerless CSV listing the patches"
    )
    patches.add_argument("out", metavar="OUT", help="the store folder to create")
    patches.add_argument(
        "--patch-size",
        type=int,
        metavar="N",
        help="side every patch must have (default: that of the first readable patch)",
    )
    _add_force(patches)
    patches.set_defaults(run=_import_patches)

    specimens = commands.add_parser(
        "import-specimens",
        help="cut full specimen images into the 5 x 3 patch grid and import them",
        description="Import full I3A specimen images {patient:05d}_p{s}.tif with masks "
        "{patient:05d}_p{s}_Mask.tif, cut into a grid of patches (by default the original "
        "5 x 3 grid of 384-pixel patches with strides 251 and 328 on 1388 x 1040 images; "
        "patch k lies in row k mod rows, column k div rows). The label table is a CSV with a "
        "header holding pattern, intensity and either image (a specimen file name) or "
        "patient (every specimen image of the patient in SRC), or the original headerless "
        "patch CSV. An image must cover the grid, (cols - 1) * stride-x + patch-size pixels "
        "wide and (rows - 1) * stride-y + patch-size high; a larger one gives its top-left "
        "part. Every input is checked first: all problems are printed and nothing is "
        "written if there is any.",
    )
    specimens.add_argument("src", metavar="SRC", help="folder holding the specimen TIFFs")
    specimens.add_argument("--labels", required=True, metavar="CSV", help="label table (see above)")
    specimens.add_argument("out", metavar="OUT", help="the store folder to create")
    grid = specimens.add_argument_group(
        "grid", "where the patches lie; the defaults are the original study's"
    )
    grid.add_argument(
        "--patch-size",
        type=int,
        default=ORIGINAL.size,
        metavar="N",
        help="patch side; the strides do not scale with it (%(default)s)",
    )
    grid.add_argument(
        "--grid-cols", type=int, default=ORIGINAL.cols, metavar="N", help="columns (%(default)s)"
    )
    grid.add_argument(
        "--grid-rows", type=int, default=ORIGINAL.rows, metavar="N", help="rows (%(default)s)"
    )
    grid.add_argument(
        "--stride-x",
        type=int,
        default=ORIGINAL.stride_x,
        metavar="PX",
        help="pixels from one column to the next (%(default)s)",
    )
    grid.add_argument(
        "--stride-y",
        type=int,
        default=ORIGINAL.stride_y,
        metavar="PX",
        help="pixels from one row to the next (%(default)s)",
    )
    _add_force(specimens)
    specimens.set_defaults(run=_import_specimens)

    synth = commands.add_parser(
        "synth",
        help="generate a synthetic store",
        description="Generate synthetic HEp-2 specimens (textures by pattern, brightness by "
        "intensity, real patient ids and class balance), cut into the 5 x 3 grid scaled to "
        "the patch size, into a new store. Deterministic for a given seed.",
    )
    synth.add_argument("out", metavar="OUT", help="the store folder to create")
    _add_synthetic_options(synth, patients=SynthSpec().patients)
    synth.add_argument(
        "--size", type=int, default=SynthSpec().size, metavar="PX", help="patch side (%(default)s)"
    )
    _add_force(synth)
    synth.set_defaults(run=_synth)

    layout = commands.add_parser(
        "synth-i3a",
        help="write synthetic images in the I3A task-2 layout, to try the importers",
        description="Write synthetic specimens as the I3A task-2 distribution lays them out: "
        "{patient:05d}_p{s}.tif (1388 x 1040, 8-bit grey) with {patient:05d}_p{s}_Mask.tif "
        "(0/255), and the original headerless patch CSV i3a_task2_patches.csv; with "
        "--patches also the pre-cut 384 x 384 patches. For trying import-specimens and "
        "import-patches (docs/real-data.md) before the real images arrive.",
    )
    layout.add_argument("out", metavar="OUT", help="the folder to create (new or empty)")
    _add_synthetic_options(layout, patients=5)
    layout.add_argument(
        "--patches", action="store_true", help="also write the 15 pre-cut patches of each"
    )
    layout.set_defaults(run=_synth_i3a)

    info = commands.add_parser(
        "info",
        help="print a store's counts by pattern, intensity, patient and fold",
        description="Print a store's facts (patch size, counts, content hash) and tables of "
        "patches and patients per pattern and intensity and per patient-level fold.",
    )
    info.add_argument("store", metavar="STORE", help="a store folder")
    info.add_argument(
        "--folds", choices=FOLD_SCHEMES, default="stratified", help="fold scheme (%(default)s)"
    )
    info.add_argument(
        "--num-folds", type=int, default=5, metavar="K", help="number of folds (%(default)s)"
    )
    info.add_argument(
        "--fold-seed",
        type=int,
        default=0,
        metavar="K",
        help="seed of the stratified folds (%(default)s)",
    )
    info.set_defaults(run=_info)

    verify = commands.add_parser(
        "verify",
        help="check a store's files and content hash",
        description="Open a store (array sizes against its index) and recompute its content "
        "hash, reading every byte; exit status 1 when it differs from store.json's.",
    )
    verify.add_argument("store", metavar="STORE", help="a store folder")
    verify.set_defaults(run=_verify)
    add_version_option(parser)
    return parser


def _add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


# --- commands --------------------------------------------------------------------------------


def _import_patches(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.patch_size is not None and args.patch_size < 1:
        parser.error(f"--patch-size must be positive, got {args.patch_size}")
    with _bar("importing patches") as advance:
        store = import_patches(
            args.src,
            args.index,
            args.out,
            patch_size=args.patch_size,
            force=args.force,
            progress=advance,
        )
    _done(store)
    return 0


def _import_specimens(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        grid = PatchGrid(
            size=args.patch_size,
            cols=args.grid_cols,
            rows=args.grid_rows,
            stride_x=args.stride_x,
            stride_y=args.stride_y,
        )
    except ValueError as error:
        parser.error(str(error))
    with _bar("importing specimens") as advance:
        store = import_specimens(
            args.src, args.labels, args.out, grid=grid, force=args.force, progress=advance
        )
    _done(store)
    return 0


def _add_synthetic_options(parser: argparse.ArgumentParser, patients: int) -> None:
    """--patients, --seed and --specimens of the synthetic generator (SynthSpec)."""
    defaults = SynthSpec()
    parser.add_argument(
        "--patients", type=int, default=patients, metavar="N", help="patients (%(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, metavar="K", help="random seed (%(default)s)"
    )
    parser.add_argument(
        "--specimens",
        type=int,
        default=defaults.specimens,
        metavar="N",
        help="specimen images per patient, 1-4 (%(default)s)",
    )


def _synth(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        spec = SynthSpec(
            patients=args.patients, size=args.size, specimens=args.specimens, seed=args.seed
        )
    except ValueError as error:
        parser.error(str(error))
    with _bar("generating", total=spec.num_patches) as advance:
        store = build_synthetic_store(args.out, spec, force=args.force, progress=advance)
    _done(store)
    return 0


def _synth_i3a(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        spec = SynthSpec(patients=args.patients, size=384, specimens=args.specimens, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    with _bar("writing specimens", total=spec.patients * spec.specimens) as advance:
        index = write_i3a_layout(args.out, spec, patches=args.patches, progress=advance)
    print(f"{args.out}: {spec.patients * spec.specimens} specimens, patch index {index}")
    return 0


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    store = open_store(args.store)
    index = store.index
    folds = assign_folds(index, args.folds, args.num_folds, args.fold_seed)
    console = Console()
    console.print(_facts(store))
    console.print(_label_table(index))
    console.print(_fold_table(index, folds, args.folds))
    return 0


def _verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    store = open_store(args.store)
    store.verify()
    print(f"{store.path}: {len(store)} patches, content hash {store.content_hash}: intact")
    return 0


# --- output ----------------------------------------------------------------------------------


@contextmanager
def _bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields advance(done, total=None)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Transient: the bar goes once done; _done or the error message says what happened.
    # Only on a terminal: a log or a pipe gets no redrawn lines.
    console = Console(stderr=True)
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(done: int, total: int | None = None) -> None:
            progress.update(task, advance=done, total=total)

        yield advance


def _done(store: PatchStore) -> None:
    print(
        f"wrote {len(store)} patches of {store.meta['patients']} patients "
        f"({store.size} px) to {store.path}, content hash {store.content_hash}"
    )


def _facts(store: PatchStore) -> Table:
    index = store.index
    per_patient = index.groupby("patient").size()
    table = Table(title=f"store {store.path}", show_header=False)
    for name, value in (
        ("source", store.meta.get("source", "?")),
        ("patch size", f"{store.size} x {store.size}"),
        ("patches", len(store)),
        ("patients", index.patient.nunique()),
        ("specimens", len(index.groupby(["patient", "specimen"]))),
        ("patches per patient", _range(per_patient)),
        ("content hash", store.content_hash),
    ):
        table.add_row(name, str(value))
    return table


def _range(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def _label_table(index: pd.DataFrame) -> Table:
    """Patches and patients per pattern (rows) and intensity (columns)."""
    groups = index.groupby(["pattern", "intensity"])
    patches = groups.size().unstack(fill_value=0)
    patients = groups.patient.nunique().unstack(fill_value=0)
    patches = patches.reindex(index=PATTERNS, columns=INTENSITIES, fill_value=0)
    patients = patients.reindex(index=PATTERNS, columns=INTENSITIES, fill_value=0)
    table = Table(title="patches (patients) by pattern and intensity")
    table.add_column("pattern")
    for column in (*INTENSITIES, "total"):
        table.add_column(column, justify="right")
    by_pattern = index.groupby("pattern").patient.nunique().reindex(PATTERNS, fill_value=0)
    for pattern in PATTERNS:
        cells = [_cell(patches.loc[pattern, i], patients.loc[pattern, i]) for i in INTENSITIES]
        table.add_row(pattern, *cells, _cell(patches.loc[pattern].sum(), by_pattern[pattern]))
    by_intensity = index.groupby("intensity").patient.nunique().reindex(INTENSITIES, fill_value=0)
    totals = [_cell(patches[i].sum(), by_intensity[i]) for i in INTENSITIES]
    table.add_row("total", *totals, _cell(len(index), index.patient.nunique()), style="bold")
    return table


def _cell(patches: int, patients: int) -> str:
    return f"{int(patches)} ({int(patients)})"


def _fold_table(index: pd.DataFrame, folds: pd.Series, scheme: str) -> Table:
    fold = index.patient.map(folds)
    table = Table(title=f"{scheme} folds: patches (patients)")
    table.add_column("fold")
    for column in ("patches", *INTENSITIES):
        table.add_column(column, justify="right")
    for name, rows in index.groupby(fold, sort=True):
        counts = [
            _cell((rows.intensity == i).sum(), rows.patient[rows.intensity == i].nunique())
            for i in INTENSITIES
        ]
        table.add_row(str(name), _cell(len(rows), rows.patient.nunique()), *counts)
    return table


if __name__ == "__main__":
    sys.exit(main())
