"""Importers and `python -m mtl.data`: synthetic files in exactly the real I3A layouts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtl.data import PatchGrid, SynthSpec, assign_folds, build_synthetic_store, open_store
from mtl.data.__main__ import main
from mtl.data.importers import ImportProblems, import_patches, import_specimens, read_grey
from mtl.data.synthetic import _patient_style, render_specimen

GRID = PatchGrid().scaled_to(64)  # 64 px patches on 232 x 174 specimens
GRID_ARGS = ["--patch-size=64", f"--stride-x={GRID.stride_x}", f"--stride-y={GRID.stride_y}"]
LABELS = {1: ("homogeneous", "intermediate"), 2: ("numem", "positive")}


# --- writing inputs in the real layouts -------------------------------------------------------


def render(patient: int, specimen: int, grid: PatchGrid = GRID) -> tuple[np.ndarray, np.ndarray]:
    """A realistic grey specimen and its 0/1 mask."""
    rng = np.random.default_rng([patient, specimen])
    pattern, intensity = LABELS.get(patient, ("speckled", "positive"))
    style = _patient_style(rng, pattern, intensity, grid.size)
    return render_specimen(rng, style, grid.height, grid.width)


def write(path: Path, image: np.ndarray, channels: int = 1) -> None:
    """An 8-bit TIFF; grey repeated to 3 or 4 channels (with an opaque alpha) if asked."""
    if channels > 1:
        image = np.repeat(image[:, :, None], 3, axis=2)
        if channels == 4:
            image = np.concatenate([image, np.full_like(image[:, :, :1], 255)], axis=2)
    assert cv2.imwrite(str(path), image)


def write_specimens(src: Path, specimens: int = 2, grid: PatchGrid = GRID) -> dict:
    """`{patient:05d}_p{s}.tif` and `_Mask.tif` (0/255) of LABELS' patients -> sources.

    Specimen p0 of patient 1 is 4-channel and p1 of patient 1 is RGB; the masks of
    patient 2 are stored as 0/1.
    """
    src.mkdir(parents=True, exist_ok=True)
    sources = {}
    for patient in LABELS:
        for s in range(specimens):
            image, mask = render(patient, s, grid)
            channels = {(1, 0): 4, (1, 1): 3}.get((patient, s), 1)
            write(src / f"{patient:05d}_p{s}.tif", image, channels)
            write(src / f"{patient:05d}_p{s}_Mask.tif", mask * (1 if patient == 2 else 255))
            sources[patient, s] = image, mask
    return sources


def write_patches(src: Path, sources: dict, grid: PatchGrid = GRID) -> tuple[Path, dict]:
    """Pre-cut patches of `sources` and the original headerless CSV (labels with a trailing
    space, as in the real file) -> (csv, {(patient, specimen, k): (image, mask)})."""
    src.mkdir(parents=True, exist_ok=True)
    lines, patches = [], {}
    for (patient, s), (image, mask) in sorted(sources.items()):
        pattern, intensity = LABELS[patient]
        for k in range(len(grid)):
            name = f"{patient:05d}_p{s}_patch{k}"
            patch, patch_mask = grid.cut(image, k), grid.cut(mask, k)
            write(src / f"{name}.tif", patch, channels=4 if (patient, s, k) == (2, 0, 7) else 1)
            write(src / f"{name}_Mask.tif", patch_mask * (1 if k == 4 else 255))
            lines.append(f"{name}.tif,{name}_Mask.tif,{pattern} ,{intensity}\n")
            patches[patient, s, k] = patch, patch_mask
    csv = src.parent / "index.csv"
    csv.write_text("".join(lines))
    return csv, patches


def edit_csv(csv: Path, line: int, text: str | None) -> None:
    """Replace (or with None delete) a 1-based line, or append when line is 0."""
    lines = csv.read_text().splitlines(keepends=True)
    if line == 0:
        lines.append(text)
    elif text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    csv.write_text("".join(lines))


@pytest.fixture
def patch_layout(tmp_path):
    """Pre-cut patches of two patients (one specimen each) -> (src, csv, out)."""
    base = tmp_path / "patch_layout"
    src = base / "patches"
    csv, _ = write_patches(src, write_specimens(base / "specimens", specimens=1))
    (base / "stores").mkdir()
    return src, csv, base / "stores" / "out"


@pytest.fixture
def specimen_layout(tmp_path):
    """Specimens of two patients (two each) and an image label table -> (src, csv, out)."""
    base = tmp_path / "specimen_layout"
    src = base / "specimens"
    write_specimens(src)
    csv = base / "labels.csv"
    rows = [f"{p:05d}_p{s}.tif,{LABELS[p][0]},{LABELS[p][1]}" for p in LABELS for s in (0, 1)]
    csv.write_text("\n".join(["image,pattern,intensity", *rows]) + "\n")
    (base / "stores").mkdir()
    return src, csv, base / "stores" / "out"


def run_fails(capsys, argv: list, out: Path, *fragments: str) -> str:
    """The CLI exits 1, names every fragment on stderr and leaves nothing, not even hidden."""
    status = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert status == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
    return err


# --- good input -------------------------------------------------------------------------------


def test_specimens_are_cut_into_the_grid_pixel_for_pixel(tmp_path):
    src = tmp_path / "src"
    sources = write_specimens(src)
    table = tmp_path / "labels.csv"
    # Labels as labs write them: any case, trailing spaces, long names.
    table.write_text(
        "image,pattern,intensity\n"
        "00002_p1.tif,Nuclear Membrane ,Positive \n"
        "00001_p0.tif,homogeneous ,intermediate\n"
        "00001_p1.tif,HOMOGENEOUS,intermediate \n"
        "00002_p0.tif,numem,positive\n"
    )
    store = import_specimens(src, table, tmp_path / "store", grid=GRID)

    assert len(store) == 4 * 15 and store.size == 64
    index = store.index
    assert list(index.patch_id[:3]) == ["00001_p0_patch0", "00001_p0_patch1", "00001_p0_patch2"]
    assert index.groupby("patient").pattern.unique().map(list).to_dict() == {
        1: ["homogeneous"], 2: ["numem"],
    }  # fmt: skip
    assert set(index.intensity[index.patient == 2]) == {"positive"}
    for i, row in index.iterrows():
        image, mask = sources[row.patient, row.specimen]
        top, left = GRID.offset(row.patch)
        stored_image, stored_mask = store[i]
        # Also the 4-channel (00001_p0) and RGB (00001_p1) files: grey again, exactly.
        np.testing.assert_array_equal(stored_image, image[top : top + 64, left : left + 64])
        np.testing.assert_array_equal(stored_mask, mask[top : top + 64, left : left + 64])
        assert row.source == f"{row.patient:05d}_p{row.specimen}.tif"
    assert set(np.unique(store.masks)) == {0, 1}  # from 0/255 and 0/1 files alike
    assert store.meta["source"] == "i3a-specimens" and store.meta["grid"]["stride_x"] == 42


def test_specimens_at_the_real_geometry(tmp_path):
    """1388 x 1040 specimens, 384 patches at the offsets of the I3A task-2 patch grid."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1040, 1388), dtype=np.uint8) for _ in range(2)]
    masks = [(rng.random((1040, 1388)) < 0.4).astype(np.uint8) for _ in range(2)]
    for s in range(2):
        write(src / f"00007_p{s}.tif", images[s], channels=4 if s else 1)
        write(src / f"00007_p{s}_Mask.tif", masks[s] * 255)
    write(src / "00008_p0.tif", images[0])  # a patient not in the table: not imported
    table = tmp_path / "labels.csv"
    table.write_text("patient,pattern,intensity\n7,Speckled ,positive\n")
    store = import_specimens(src, table, tmp_path / "store")

    assert len(store) == 30 and store.size == 384
    assert set(store.index.pattern) == {"speckled"} and set(store.index.patient) == {7}
    for i, row in store.index.iterrows():
        top = (0, 328, 656)[row.patch % 3]  # column-major: k = 1 is the second row
        left = (0, 251, 502, 753, 1004)[row.patch // 3]
        image, mask = store[i]
        window = np.s_[top : top + 384, left : left + 384]
        np.testing.assert_array_equal(image, images[row.specimen][window])
        np.testing.assert_array_equal(mask, masks[row.specimen][window])


def test_specimens_take_their_labels_from_the_headerless_patch_csv(tmp_path, specimen_layout):
    src, table, out = specimen_layout
    by_table = import_specimens(src, table, out, grid=GRID)
    lines = [
        f"{p:05d}_p{s}_patch{k}.tif,{p:05d}_p{s}_patch{k}_Mask.tif,{LABELS[p][0]} ,{LABELS[p][1]}"
        for p in LABELS
        for s in (0, 1)
        for k in range(15)
    ]
    (tmp_path / "patches.csv").write_text("\n".join(lines) + "\n")
    by_csv = import_specimens(src, tmp_path / "patches.csv", tmp_path / "again", grid=GRID)
    assert by_csv.content_hash == by_table.content_hash


def test_pre_cut_patches_are_imported_pixel_for_pixel(tmp_path):
    sources = write_specimens(tmp_path / "specimens")
    csv, patches = write_patches(tmp_path / "patches", sources)
    store = import_patches(tmp_path / "patches", csv, tmp_path / "store")

    assert len(store) == len(patches) == 60 and store.size == 64
    for i, row in store.index.iterrows():
        image, mask = patches[row.patient, row.specimen, row.patch]
        np.testing.assert_array_equal(store[i][0], image)  # (2, 0, 7) was 4-channel
        np.testing.assert_array_equal(store[i][1], mask)  # patch 4's mask was 0/1
        assert row.pattern == LABELS[row.patient][0]  # 'homogeneous ' -> 'homogeneous'
        assert row.source == f"{row.patch_id}.tif"
    assert set(np.unique(store.masks)) == {0, 1}
    # The same pixels cut by the specimen importer make the same store.
    table = tmp_path / "labels.csv"
    table.write_text("patient,pattern,intensity\n1,homogeneous,intermediate\n2,numem,positive\n")
    cut = import_specimens(tmp_path / "specimens", table, tmp_path / "cut", grid=GRID)
    assert cut.content_hash == store.content_hash


def test_cli_imports_both_layouts(capsys, patch_layout, specimen_layout, tmp_path):
    src, csv, out = patch_layout
    assert main(["import-patches", str(src), "--index", str(csv), str(out)]) == 0
    assert "wrote 30 patches of 2 patients (64 px)" in capsys.readouterr().out
    src, table, out = specimen_layout
    assert main(["import-specimens", str(src), "--labels", str(table), str(out), *GRID_ARGS]) == 0
    assert len(open_store(out)) == 60


def test_images_are_read_as_8_bit_grey_with_or_without_opencv(tmp_path, monkeypatch):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    for channels in (1, 3, 4):
        write(tmp_path / f"c{channels}.tif", grey, channels)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + bytes(100))  # a TIFF header, then nothing
    write(tmp_path / "wide.tif", grey.astype(np.uint16) * 200)

    def check():
        for channels in (1, 3, 4):
            np.testing.assert_array_equal(read_grey(tmp_path / f"c{channels}.tif"), grey)
        with pytest.raises(ValueError, match="unreadable or corrupt"):
            read_grey(tmp_path / "bad.tif")
        with pytest.raises(ValueError, match="uint16 pixels; only 8-bit"):
            read_grey(tmp_path / "wide.tif")

    check()
    # A TIFF compression OpenCV cannot decode falls back to PIL.
    monkeypatch.setattr("mtl.data.importers.cv2.imread", lambda *args: None)
    check()


# --- bad input: every problem named, status 1, nothing left behind ----------------------------


def _remove(name):
    return lambda src, csv: (src / name).unlink()


def _overwrite(name, array):
    return lambda src, csv: write(src / name, array)


def _garbage(name):
    return lambda src, csv: (src / name).write_bytes(b"II*\x00" + b"\x17" * 200)


def _line(number, text):
    return lambda src, csv: edit_csv(csv, number, text)


def _shrink(stem, width):
    def spoil(src, csv):
        for name in (f"{stem}.tif", f"{stem}_Mask.tif"):
            write(src / name, read_grey(src / name)[:, :width].copy())

    return spoil


BAD_PATCHES = {
    "missing image": (
        _remove("00001_p0_patch3.tif"),
        "index.csv line 4: 00001_p0_patch3.tif not found",
    ),
    "missing mask": (
        _remove("00002_p0_patch5_Mask.tif"),
        "line 21: 00002_p0_patch5_Mask.tif not found",
    ),
    "corrupt image": (
        _garbage("00001_p0_patch2.tif"),
        "line 3: 00001_p0_patch2.tif is unreadable or corrupt",
    ),
    "corrupt mask": (
        _garbage("00001_p0_patch2_Mask.tif"),
        "line 3: 00001_p0_patch2_Mask.tif is unreadable",
    ),
    "16-bit image": (
        _overwrite("00001_p0_patch6.tif", np.ones((64, 64), np.uint16)),
        "line 7: 00001_p0_patch6.tif has uint16 pixels; only 8-bit",
    ),
    "mask size": (
        _overwrite("00001_p0_patch1_Mask.tif", np.zeros((60, 64), np.uint8)),
        "line 2: mask 00001_p0_patch1_Mask.tif is 64x60, its image 00001_p0_patch1.tif is 64x64",
    ),
    "mask values": (
        _overwrite("00002_p0_patch0_Mask.tif", np.tile(np.uint8([0, 128, 255, 255]), (64, 16))),
        "line 16: mask 00002_p0_patch0_Mask.tif holds the values 0, 128, 255; expected 0 and 255",
    ),
    "unknown pattern": (
        _line(9, "00001_p0_patch8.tif,00001_p0_patch8_Mask.tif,speckeld ,intermediate\n"),
        "index.csv line 9: unknown pattern 'speckeld '",
    ),
    "unknown intensity": (
        _line(10, "00001_p0_patch9.tif,00001_p0_patch9_Mask.tif,homogeneous ,weak\n"),
        "index.csv line 10: unknown intensity 'weak'",
    ),
    "conflicting labels": (
        _line(17, "00002_p0_patch1.tif,00002_p0_patch1_Mask.tif,golgi ,positive\n"),
        "patient 2 has conflicting labels: numem/positive on lines 16, 18, 19, 20, 21 and 9 more;"
        " golgi/positive on line 17",
    ),
    "duplicate row": (
        _line(0, "00001_p0_patch0.tif,00001_p0_patch0_Mask.tif,homogeneous ,intermediate\n"),
        "line 31: duplicate row: 00001_p0_patch0.tif is already on line 1",
    ),
    "patch size differs": (
        _shrink("00002_p0_patch9", width=60),  # and its mask
        "line 25: 00002_p0_patch9.tif is 60x64; expected 64x64 like the first square patch, "
        "00001_p0_patch0.tif",
    ),
    "file name": (
        _line(12, "patch11.tif,patch11_Mask.tif,homogeneous ,intermediate\n"),
        "line 12: 'patch11.tif' is not named {patient:05d}_p{s}_patch{k}.tif",
    ),
}


@pytest.mark.parametrize("case", BAD_PATCHES)
def test_bad_patch_input_is_reported(capsys, patch_layout, case):
    src, csv, out = patch_layout
    spoil, message = BAD_PATCHES[case]
    spoil(src, csv)
    run_fails(capsys, ["import-patches", src, "--index", csv, out], out, message)


def test_patches_must_have_the_size_asked_for(capsys, patch_layout):
    src, csv, out = patch_layout
    err = run_fails(
        capsys,
        ["import-patches", src, "--index", csv, out, "--patch-size", "48"],
        out,
        "line 30: 00002_p0_patch14.tif is 64x64; expected the patch size asked for, 48x48",
    )
    assert err.count("expected the patch size asked for") == 30


def test_a_missing_folder_or_table_is_reported_once(capsys, patch_layout):
    src, csv, out = patch_layout
    err = run_fails(capsys, ["import-patches", src.with_name("nope"), "--index", csv, out], out)
    assert "nope: image folder not found" in err and "1 problem with the input" in err
    err = run_fails(capsys, ["import-patches", src, "--index", csv.with_name("x.csv"), out], out)
    assert "x.csv: label table not found" in err


def test_every_problem_is_reported_at_once(patch_layout):
    src, csv, out = patch_layout
    for case in (
        "missing mask",
        "corrupt image",
        "mask values",
        "unknown intensity",
        "duplicate row",
    ):
        BAD_PATCHES[case][0](src, csv)
    with pytest.raises(ImportProblems) as caught:
        import_patches(src, csv, out)
    assert len(caught.value.problems) == 5
    for problem, case in zip(
        caught.value.problems,
        ("unknown intensity", "duplicate row", "corrupt image", "mask values", "missing mask"),
        strict=True,
    ):
        assert BAD_PATCHES[case][1] in problem
    assert list(out.parent.iterdir()) == []


def _table(text):
    return lambda src, csv: csv.write_text(text)


BAD_SPECIMENS = {
    "image smaller than the grid": (
        _shrink("00002_p1", width=200),
        "line 5: 00002_p1.tif is 200x174, smaller than the 5x3 grid of 64-pixel patches (232x174)",
    ),
    "mask size": (
        _overwrite("00002_p1_Mask.tif", np.zeros((174, 200), np.uint8)),
        "labels.csv line 5: mask 00002_p1_Mask.tif is 200x174, its image 00002_p1.tif is 232x174",
    ),
    "missing image": (_remove("00001_p1.tif"), "labels.csv line 3: 00001_p1.tif not found in"),
    "missing mask": (_remove("00002_p0_Mask.tif"), "line 4: 00002_p0_Mask.tif not found in"),
    "corrupt image": (_garbage("00001_p0.tif"), "line 2: 00001_p0.tif is unreadable or corrupt"),
    "mask values": (
        _overwrite("00001_p1_Mask.tif", np.full((174, 232), 7, np.uint8)),
        "line 3: mask 00001_p1_Mask.tif holds the values 7; expected 0 and 255 (or 0 and 1)",
    ),
    "unknown pattern": (
        _line(3, "00001_p1.tif,cytoplasmic,intermediate\n"),
        "line 3: unknown pattern 'cytoplasmic'",
    ),
    "conflicting labels": (
        _line(3, "00001_p1.tif,homogeneous,positive\n"),
        "labels.csv: patient 1 has conflicting labels: homogeneous/intermediate on line 2; "
        "homogeneous/positive on line 3",
    ),
    "duplicate row": (
        _line(0, "00002_p1.tif,numem,positive\n"),
        "labels.csv line 6: duplicate row: 00002_p1.tif is already on line 5",
    ),
    "patient without images": (
        _table("patient,pattern,intensity\n1,homogeneous,intermediate\n3,golgi,positive\n"),
        "labels.csv line 3: no specimen image of patient 3 (00003_p{s}.tif) in",
    ),
    "duplicate patient": (
        _table(
            "patient,pattern,intensity\n1,homogeneous,intermediate\n1,homogeneous,intermediate\n"
        ),
        "labels.csv line 3: duplicate row: patient 1 is already on line 2",
    ),
    "header": (
        _table("specimen,pattern,intensity\n00001_p0.tif,homogeneous,intermediate\n"),
        "labels.csv line 1: the header needs pattern, intensity and an image or patient column",
    ),
}


@pytest.mark.parametrize("case", BAD_SPECIMENS)
def test_bad_specimen_input_is_reported(capsys, specimen_layout, case):
    src, csv, out = specimen_layout
    spoil, message = BAD_SPECIMENS[case]
    spoil(src, csv)
    argv = ["import-specimens", src, "--labels", csv, out, *GRID_ARGS]
    run_fails(capsys, argv, out, message)


def test_specimens_smaller_than_the_real_grid_are_reported(capsys, specimen_layout):
    src, csv, out = specimen_layout  # 232 x 174 specimens, cut with the default grid
    err = run_fails(capsys, ["import-specimens", src, "--labels", csv, out], out)
    assert err.count("smaller than the 5x3 grid of 384-pixel patches (1388x1040)") == 4


# --- existing stores, info, synth, help -------------------------------------------------------


def test_an_existing_store_is_replaced_only_with_force(capsys, patch_layout, tmp_path):
    src, csv, out = patch_layout
    old = build_synthetic_store(out, SynthSpec(patients=5, size=32, specimens=1, seed=3))
    argv = ["import-patches", str(src), "--index", str(csv), str(out)]
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert open_store(out).content_hash == old.content_hash
    # A failing import does not replace the store, even with --force.
    (src / "00001_p0_patch0.tif").rename(tmp_path / "aside.tif")
    assert main([*argv, "--force"]) == 1
    assert open_store(out).content_hash == old.content_hash
    (tmp_path / "aside.tif").rename(src / "00001_p0_patch0.tif")
    assert main([*argv, "--force"]) == 0
    assert len(open_store(out)) == 30
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no partial or old folder left


def test_info_prints_the_counts(capsys, tiny_store):
    assert main(["info", str(tiny_store.path)]) == 0
    out = capsys.readouterr().out
    index = tiny_store.index
    assert tiny_store.content_hash in out
    assert "150 (10)" in out  # all patches (patients)
    for pattern, patches in index.pattern.value_counts().items():
        patients = index[index.pattern == pattern].patient.nunique()
        assert f"{pattern}" in out and f"{patches} ({patients})" in out
    assert re.search(r"│ patients\s+│ 10\s", out)
    folds = assign_folds(index, "stratified", 5, 0)
    assert "stratified folds" in out
    for fold, patients in folds.groupby(folds).groups.items():
        patches = index.patient.isin(patients).sum()
        assert re.search(rf"│ {fold}\s+│\s+{patches} \({len(patients)}\) │", out), out
    assert main(["info", str(tiny_store.path), "--folds", "seed"]) == 0
    assert "seed folds" in capsys.readouterr().out


def test_synth_builds_the_synthetic_store(capsys, tmp_path):
    argv = ["synth", str(tmp_path / "s"), "--patients", "3", "--size", "32", "--seed", "1"]
    assert main([*argv, "--specimens", "1"]) == 0
    assert "wrote 45 patches of 3 patients (32 px)" in capsys.readouterr().out
    spec = SynthSpec(patients=3, size=32, specimens=1, seed=1)
    reference = build_synthetic_store(tmp_path / "reference", spec)
    assert open_store(tmp_path / "s").content_hash == reference.content_hash
    assert main([*argv, "--specimens", "1"]) == 1  # exists
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--size", "8"])  # SynthSpec rejects it: a usage error
    assert usage.value.code == 2


def test_every_command_has_help_and_usage_errors_exit_2(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "mtl.data", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("import-patches", "import-specimens", "synth", "info"):
        assert command in result.stdout
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert "usage: python -m mtl.data " + command in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["import-patches", "src", "out"])  # no --index
    assert usage.value.code == 2
    assert "--index" in capsys.readouterr().err


def test_the_i3a_look_alike_has_the_real_layout_and_imports_to_the_synthetic_patches(tmp_path):
    src = tmp_path / "i3a"
    assert main(["synth-i3a", str(src), "--patients", "1", "--specimens", "1", "--patches"]) == 0
    (specimen,) = sorted(src.glob("?????_p0.tif"))
    image, mask = read_grey(specimen), read_grey(specimen.with_name(f"{specimen.stem}_Mask.tif"))
    assert image.shape == mask.shape == (1040, 1388) and set(np.unique(mask)) == {0, 255}
    lines = (src / "i3a_task2_patches.csv").read_text().splitlines()
    name = f"{specimen.stem}_patch0"
    line = rf"{name}\.tif,{name}_Mask\.tif,[a-z]+ ,(intermediate|positive)"  # trailing space
    assert len(lines) == 15 and re.fullmatch(line, lines[0])
    assert len(list(src.glob("*_patch*_Mask.tif"))) == 15

    # Imported either way, the patches are those the synthetic store cuts from the same specimen.
    expected = build_synthetic_store(
        tmp_path / "synth", SynthSpec(patients=1, specimens=1, size=384)
    )
    csv = src / "i3a_task2_patches.csv"
    for command, flag in (("import-specimens", "--labels"), ("import-patches", "--index")):
        out = tmp_path / command
        assert main([command, str(src), flag, str(csv), str(out)]) == 0
        store = open_store(out)
        assert store.index.patch_id.tolist() == expected.index.patch_id.tolist()
        assert (store.images[:] == expected.images[:]).all()
        assert (store.masks[:] == expected.masks[:]).all()
    assert main(["synth-i3a", str(src)]) == 1  # an existing, non-empty folder is never touched
