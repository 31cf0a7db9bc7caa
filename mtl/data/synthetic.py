"""Synthetic HEp-2 specimens: cells whose texture tells the pattern, brightness the intensity.

Each patient gets one staining pattern and one intensity (labels are constant within a
patient, as in the real set) and `specimens` images laid out like the I3A specimens
(the 5 x 3 patch grid, scaled to the patch size). Nuclei are ellipses; the mask is the nuclei.
The textures follow the ICAP descriptions: an even fill (homogeneous), fine speckles
(speckled), a few large nucleoli (nucleolar), 40-60 discrete dots (centromere), a
perinuclear blob (golgi), a bright rim (numem), and mitotic cells with a spindle among weakly
stained interphase cells (mitsp). Brightness scales with a per-patient gain whose ranges for
the two intensities overlap a little, and every patient varies in cell density, size and
texture, so that mean brightness alone cannot tell the pattern.

Patients are drawn from the real patient table (`patient_folds.csv`) with its ids and labels,
so the class balance is the real one and the `seed` folds apply to synthetic data too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mtl.data.folds import reference_patients
from mtl.data.grid import PatchGrid

# Per-patient gain ranges. Each specimen varies around its patient's gain by SPECIMEN_GAIN,
# so specimen brightness of the two intensities overlaps on about [0.52, 0.57].
GAIN = {"intermediate": (0.25, 0.5), "positive": (0.6, 1.0)}
SPECIMEN_GAIN = (0.87, 1.13)


@dataclass(frozen=True, kw_only=True)
class SynthSpec:
    patients: int = 60
    size: int = 64
    specimens: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"patients must be at least 1, got {self.patients}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size}")
        if not 1 <= self.specimens <= 4:
            raise ValueError(f"specimens must be between 1 and 4, got {self.specimens}")

    @property
    def grid(self) -> PatchGrid:
        return PatchGrid().scaled_to(self.size)

    @property
    def num_patches(self) -> int:
        return self.patients * self.specimens * len(self.grid)


def choose_patients(count: int, seed: int) -> pd.DataFrame:
    """`count` patients of the real table (id, pattern, intensity) with its class balance.

    The joint (pattern, intensity) counts are apportioned by largest remainder, then patients
    are drawn within each cell; beyond the table's 252 patients, labels repeat under new ids.
    """
    table = reference_patients()
    rng = np.random.default_rng(seed)
    if count >= len(table):
        extra = table.sample(n=count - len(table), replace=True, random_state=seed)
        extra = extra.assign(patient=np.arange(len(extra)) + table.patient.max() + 1)
        return pd.concat([table, extra], ignore_index=True)[["patient", "pattern", "intensity"]]
    cells = table.groupby(["pattern", "intensity"], sort=True)
    quota = cells.size() * count / len(table)
    take = np.floor(quota).astype(int)
    remainder_order = (quota - take).sort_values(ascending=False, kind="stable").index
    for key in remainder_order[: count - take.sum()]:
        take[key] += 1
    chosen = [
        group.iloc[np.sort(rng.choice(len(group), size=take[key], replace=False))]
        for key, group in cells
        if take[key]
    ]
    patients = pd.concat(chosen).sort_values("patient", ignore_index=True)
    return patients[["patient", "pattern", "intensity"]]


def generate(spec: SynthSpec) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Yield (index row, image, mask) for every patch, patient by patient, deterministically."""
    grid = spec.grid
    for row, specimen, image, mask in generate_specimens(spec):
        for k in range(len(grid)):
            record = {
                "patch_id": f"{row.patient:05d}_p{specimen}_patch{k}",
                "patient": int(row.patient),
                "specimen": specimen,
                "patch": k,
                "pattern": row.pattern,
                "intensity": row.intensity,
            }
            yield record, grid.cut(image, k).copy(), grid.cut(mask, k).copy()


def generate_specimens(spec: SynthSpec) -> Iterator[tuple[object, int, np.ndarray, np.ndarray]]:
    """Yield (patient row, specimen number, image, 0/1 mask) for every specimen image."""
    grid = spec.grid
    for row in choose_patients(spec.patients, spec.seed).itertuples(index=False):
        # One generator per patient: patients do not depend on how many come before them.
        rng = np.random.default_rng([spec.seed, int(row.patient)])
        style = _patient_style(rng, row.pattern, row.intensity, grid.size)
        for specimen in range(spec.specimens):
            gain = style.gain * rng.uniform(*SPECIMEN_GAIN)
            image, mask = render_specimen(rng, replace(style, gain=gain), grid.height, grid.width)
            yield row, specimen, image, mask


I3A_INDEX = "i3a_task2_patches.csv"


def write_i3a_layout(
    out: str | os.PathLike, spec: SynthSpec, *, patches: bool = False, progress=None
) -> Path:
    """Synthetic specimens in the I3A task-2 layout, to try the importers before the real data
    arrives: `{patient:05d}_p{s}.tif` (8-bit grey, the grid's size: 1388 x 1040 at 384 px)
    with `_Mask.tif` (0/255), and the original headerless patch CSV (patterns with their
    trailing space) as OUT/i3a_task2_patches.csv; with `patches`, also the pre-cut
    `{patient:05d}_p{s}_patch{k}.tif` and their masks. `progress(n)` per specimen. Returns
    the CSV's path. OUT must not exist or be empty."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_i3a_layout(out, spec, patches, progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never a half-written folder
        raise


def _write_i3a_layout(out: Path, spec: SynthSpec, patches: bool, progress) -> Path:
    grid, lines = spec.grid, []

    def write(name: str, array: np.ndarray) -> None:
        if not cv2.imwrite(str(out / name), array):
            raise OSError(f"cannot write {out / name}")

    for row, specimen, image, mask in generate_specimens(spec):
        stem = f"{row.patient:05d}_p{specimen}"
        write(f"{stem}.tif", image)
        write(f"{stem}_Mask.tif", mask * 255)
        for k in range(len(grid)):
            name = f"{stem}_patch{k}"
            lines.append(f"{name}.tif,{name}_Mask.tif,{row.pattern} ,{row.intensity}\n")
            if patches:
                write(f"{name}.tif", grid.cut(image, k))
                write(f"{name}_Mask.tif", grid.cut(mask, k) * 255)
        if progress is not None:
            progress(1)
    index = out / I3A_INDEX
    index.write_text("".join(lines))
    return index


@dataclass(frozen=True)
class _Style:
    """What stays constant within a patient."""

    pattern: str
    gain: float
    radius: float
    coverage: float
    background: float
    noise: float
    texture: float  # jitters texture parameters per patient (0.8-1.2)


def _patient_style(rng: np.random.Generator, pattern: str, intensity: str, size: int) -> _Style:
    return _Style(
        pattern=pattern,
        gain=rng.uniform(*GAIN[intensity]),
        # Nuclei keep a legible size on small patches (texture needs pixels).
        radius=max(9.0, size / 12) * rng.uniform(0.85, 1.15),
        coverage=rng.uniform(0.15, 0.55),
        background=rng.uniform(0.02, 0.07),
        noise=rng.uniform(0.015, 0.035),
        texture=rng.uniform(0.8, 1.2),
    )


def render_specimen(
    rng: np.random.Generator, style: _Style, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 specimen image and its 0/1 nucleus mask."""
    signal = np.zeros((height, width), np.float32)
    mask = np.zeros((height, width), np.uint8)
    for cy, cx in _place_cells(rng, style, height, width):
        _draw_cell(rng, style, signal, mask, cy, cx)
    # Out-of-focus light: a faint halo around the cells and an uneven background.
    halo = cv2.GaussianBlur(signal, (0, 0), sigmaX=style.radius * 0.6) * 0.25
    background = style.background * (1 + 0.5 * _smooth_noise(rng, height, width, style.radius * 4))
    image = cv2.GaussianBlur(background + halo + signal, (0, 0), sigmaX=0.6)
    image += rng.normal(0.0, style.noise, image.shape).astype(np.float32) * (1 + 2 * image)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """White noise blurred at `sigma`, scaled to unit spread. Made on a grid `step` times
    coarser and resized: the field varies over about sigma pixels, so this is the same field
    (its autocorrelation exp(-d^2 / 4 sigma^2) kept) at a hundredth of the cost of a blur
    whose kernel is as wide as a specimen (a second per full-size specimen)."""
    step = max(1, int(sigma // 4))
    coarse = rng.standard_normal((-(-height // step), -(-width // step))).astype(np.float32)
    noise = cv2.GaussianBlur(coarse, (0, 0), sigma / step)
    if step > 1:
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return noise / (noise.std() + 1e-6)


def _place_cells(
    rng: np.random.Generator, style: _Style, height: int, width: int
) -> list[tuple[float, float]]:
    """Cell centres by rejection: nuclei may touch but rarely overlap."""
    target = int(style.coverage * height * width / (np.pi * style.radius**2))
    min_distance = 1.8 * style.radius
    centres: list[tuple[float, float]] = []
    for _ in range(target * 20):
        if len(centres) == target:
            break
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if all((cy - y) ** 2 + (cx - x) ** 2 > min_distance**2 for y, x in centres):
            centres.append((cy, cx))
    return centres


def _draw_cell(
    rng: np.random.Generator,
    style: _Style,
    signal: np.ndarray,
    mask: np.ndarray,
    cy: float,
    cx: float,
) -> None:
    mitotic = style.pattern == "mitsp" and rng.random() < 0.3
    a = style.radius * rng.uniform(0.8, 1.15) * (0.85 if mitotic else 1.0)
    b = a * rng.uniform(0.65, 0.95 if not mitotic else 0.8)
    theta = rng.uniform(0, np.pi)
    half = int(np.ceil(1.5 * a)) + 2
    top, left = max(0, int(cy) - half), max(0, int(cx) - half)
    bottom, right = (
        min(signal.shape[0], int(cy) + half + 1),
        min(signal.shape[1], int(cx) + half + 1),
    )
    if top >= bottom or left >= right:
        return
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / a  # along the major axis, in radii
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    d = np.sqrt(u**2 + v**2)
    inside = d <= 1.0
    edge = np.clip((1.0 - d) * b + 0.5, 0.0, 1.0)  # one-pixel antialiased rim
    texture = _TEXTURES[style.pattern](rng, style, u, v, d, edge, a, mitotic)
    level = style.gain * rng.uniform(0.9, 1.1)
    box = signal[top:bottom, left:right]
    np.maximum(box, level * texture, out=box)
    mask[top:bottom, left:right] |= inside.astype(np.uint8)


def _dots(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    count: int,
    sigma: float,
    spread: float,
    a: float,
) -> np.ndarray:
    """`count` Gaussian dots (sigma in pixels) at random places within `spread` radii."""
    radius = spread * np.sqrt(rng.uniform(0, 1, count))
    angle = rng.uniform(0, 2 * np.pi, count)
    pu, pv = radius * np.cos(angle), radius * np.sin(angle)
    out = np.zeros_like(u)
    scale = (a / sigma) ** 2 / 2
    for du, dv in zip(pu, pv, strict=True):
        np.maximum(out, np.exp(-((u - du) ** 2 + (v - dv) ** 2) * scale), out=out)
    return out


def _homogeneous(rng, style, u, v, d, edge, a, mitotic):
    return edge * (0.6 + 0.06 * rng.standard_normal(u.shape).astype(np.float32).clip(-2, 2))


def _speckled(rng, style, u, v, d, edge, a, mitotic):
    fine = rng.random(u.shape).astype(np.float32)
    speckles = cv2.GaussianBlur((fine > 0.55).astype(np.float32), (0, 0), 0.5 * style.texture)
    holes = 1.0 - 0.8 * _dots(rng, u, v, rng.integers(1, 4), 0.2 * a, 0.5, a)  # spared nucleoli
    return edge * holes * (0.2 + 0.75 * speckles)


def _nucleolar(rng, style, u, v, d, edge, a, mitotic):
    blobs = _dots(rng, u, v, rng.integers(2, 6), 0.13 * a * style.texture, 0.55, a)
    return edge * (0.25 + 0.8 * blobs)


def _centromere(rng, style, u, v, d, edge, a, mitotic):
    # 40-60 dots on a full-size nucleus; fewer on a small one so that they stay discrete.
    count = max(8, round(rng.uniform(40, 60) * min(1.0, (a / 24) ** 2)))
    dots = _dots(rng, u, v, count, 0.75 * style.texture, 0.85, a)
    return edge * (0.2 + 0.85 * dots)


def _golgi(rng, style, u, v, d, edge, a, mitotic):
    side = rng.uniform(0, 2 * np.pi)
    angle = np.angle(np.exp(1j * (np.arctan2(v, u) - side)))
    blob = np.exp(-(((d - 0.95) / 0.22) ** 2) - (angle / (0.6 * style.texture)) ** 2)
    grains = 0.6 + 0.4 * rng.random(u.shape).astype(np.float32)
    return np.maximum(edge * 0.2, blob * grains)


def _numem(rng, style, u, v, d, edge, a, mitotic):
    rim = np.exp(-(((d - 0.9) / (0.09 * style.texture)) ** 2))
    return edge * (0.25 + 0.8 * rim)


def _mitsp(rng, style, u, v, d, edge, a, mitotic):
    interphase = edge * (0.25 + 0.1 * rng.random(u.shape).astype(np.float32))
    if not mitotic:
        return interphase
    # A spindle: two bright poles on the major axis and the fibres between them.
    poles = np.exp(-(((np.abs(u) - 0.6) ** 2 + v**2) / 0.02))
    width = 0.05 + 0.18 * np.clip(1 - np.abs(u) / 0.6, 0, 1)
    fibres = np.exp(-((v / width) ** 2)) * (np.abs(u) < 0.6)
    return np.maximum(interphase, np.maximum(poles, 0.8 * fibres) * edge)


_TEXTURES = {
    "homogeneous": _homogeneous,
    "speckled": _speckled,
    "nucleolar": _nucleolar,
    "centromere": _centromere,
    "golgi": _golgi,
    "numem": _numem,
    "mitsp": _mitsp,
}
