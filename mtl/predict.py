"""`python -m mtl.predict MODEL_DIR IMAGES... --out DIR`: masks, patterns and intensities of
new specimen images, with the fold models of an exported study as one ensemble.

A specimen is cut into patches (the 5 x 3 grid when it has the grid's size, 1388 x 1040 for
384 px patches; otherwise overlapping windows covering it), every fold model predicts every
patch and their probabilities are averaged. The cell mask is stitched from the patches by
averaging the probabilities where they overlap. The specimen's pattern and intensity are the
majority vote of its patches (the workflow's last step) and, beside it, the class of the
averaged probability; a patient's, when file names carry the patient id
(`{patient:05d}_p{s}.tif`), is the same over all its specimens' patches.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress

from mtl.config import TrainConfig, add_version_option
from mtl.data import PatchGrid
from mtl.data.importers import read_grey
from mtl.labels import INTENSITIES, PATTERNS
from mtl.loop import checkpoint_name, read_checkpoint
from mtl.model import MultiTaskUNet
from mtl.trainer import resolve_device

MODEL_FORMAT = 1
SPECIMEN_NAME = re.compile(r"(\d+)_p(\d+)")


class Ensemble:
    """The fold models of a model folder written by `python -m study.export`."""

    def __init__(self, folder: str | Path, device: str = "auto", batch_size: int = 16):
        self.folder = Path(folder)
        meta_file = self.folder / "model.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.folder}: no model.json (python -m study.export)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"{meta_file}: format {self.meta.get('format')}, expected {MODEL_FORMAT}"
            )
        if self.meta["classes"]["pattern"] != list(PATTERNS):
            raise ValueError(f"{meta_file}: pattern classes differ from this version's")
        self.config = TrainConfig.from_dict(self.meta["config"])
        self.size = self.config.image_size
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.models = [self._load(fold) for fold in self.meta["folds"]]

    def _load(self, fold: str) -> MultiTaskUNet:
        path = self.folder / checkpoint_name(fold)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (model.json lists fold {fold})")
        model = MultiTaskUNet.from_config(self.config.replace(encoder_weights=None))
        try:
            model.load_state_dict(read_checkpoint(path))
        except (RuntimeError, ValueError) as error:  # wrong architecture or a damaged file
            raise ValueError(f"{path}: does not fit the model of model.json: {error}") from None
        return model.to(self.device).eval()

    @property
    def grid(self) -> PatchGrid:
        grid = self.meta.get("patch", {}).get("grid")
        return (PatchGrid(**grid) if grid else PatchGrid()).scaled_to(self.size)

    @torch.inference_mode()
    def predict_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (N, S, S) -> mask, pattern and intensity probabilities, averaged over folds:
        (N, S, S), (N, 7), (N,)."""
        return ensemble_probabilities(self.models, patches, self.device, self.batch_size)


@torch.inference_mode()
def ensemble_probabilities(
    models: list[MultiTaskUNet], patches: np.ndarray, device: torch.device, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (N, S, S) -> mask, pattern and intensity probabilities of every patch, averaged
    over the models (in eval mode): (N, S, S), (N, 7), (N,)."""
    masks, patterns, intensities = [], [], []
    for start in range(0, len(patches), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size]))
        batch = batch.unsqueeze(1).to(device)
        outputs = [model(batch) for model in models]
        masks.append(torch.stack([o.mask.float().sigmoid() for o in outputs]).mean(0))
        patterns.append(torch.stack([o.pattern.float().softmax(1) for o in outputs]).mean(0))
        intensities.append(torch.stack([o.intensity.float().sigmoid() for o in outputs]).mean(0))
    return (
        torch.cat(masks)[:, 0].cpu().numpy(),
        torch.cat(patterns).cpu().numpy(),
        torch.cat(intensities).cpu().numpy(),
    )


def window_offsets(height: int, width: int, size: int, grid: PatchGrid) -> list[tuple[int, int]]:
    """(top, left) of every patch of an image: the grid's when the image has its size,
    otherwise half-overlapping windows, the last one flush with the border."""
    if height < size or width < size:
        raise ValueError(f"{width}x{height} is smaller than one {size}x{size} patch")
    if (height, width) == (grid.height, grid.width) and grid.size == size:
        return [grid.offset(k) for k in range(len(grid))]

    def starts(length: int) -> list[int]:
        count = math.ceil((length - size) / (size // 2)) + 1
        return sorted({round(i * (length - size) / max(count - 1, 1)) for i in range(count)})

    return [(top, left) for left in starts(width) for top in starts(height)]


@dataclass(frozen=True)
class SpecimenPrediction:
    mask_probability: np.ndarray  # (H, W), stitched
    pattern_probs: np.ndarray  # (patches, 7)
    intensity_probs: np.ndarray  # (patches,)


def stitch(probabilities: np.ndarray, offsets, height: int, width: int) -> np.ndarray:
    """Average overlapping patch probabilities into one (H, W) map."""
    total = np.zeros((height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    size = probabilities.shape[-1]
    for probability, (top, left) in zip(probabilities, offsets, strict=True):
        total[top : top + size, left : left + size] += probability
        count[top : top + size, left : left + size] += 1
    return (total / count).astype(np.float32)


def predict_specimen(ensemble: Ensemble, image: np.ndarray) -> SpecimenPrediction:
    height, width = image.shape
    offsets = window_offsets(height, width, ensemble.size, ensemble.grid)
    s = ensemble.size
    patches = np.stack([image[top : top + s, left : left + s] for top, left in offsets])
    masks, patterns, intensities = ensemble.predict_patches(patches)
    return SpecimenPrediction(stitch(masks, offsets, height, width), patterns, intensities)


def summarise(pattern_probs: np.ndarray, intensity_probs: np.ndarray) -> dict:
    """Majority vote and averaged probability of a set of patches (a specimen or a patient)."""
    votes = np.bincount(pattern_probs.argmax(1), minlength=len(PATTERNS))
    mean = pattern_probs.mean(0)
    # A tied vote goes to the tied class with the larger mean probability.
    vote = int(np.argmax(votes + mean / 2))
    positive = intensity_probs > 0.5
    positive_vote = positive.mean() > 0.5 or (
        positive.mean() == 0.5 and intensity_probs.mean() > 0.5
    )
    row = {
        "patches": len(pattern_probs),
        "pattern": PATTERNS[vote],
        "pattern_agreement": votes[vote] / len(pattern_probs),
        "pattern_by_probability": PATTERNS[int(mean.argmax())],
        "intensity": INTENSITIES[int(positive_vote)],
        "intensity_agreement": float(np.mean(positive == positive_vote)),
        "p_positive": float(intensity_probs.mean()),
    }
    row.update({f"p_{p}": float(v) for p, v in zip(PATTERNS, mean, strict=True)})
    return row


def overlay(image: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    """The image in colour with the predicted cell contours and the specimen's labels."""
    picture = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (0, 220, 0), max(1, image.shape[1] // 700))
    scale = max(0.4, image.shape[1] / 1400)
    thickness = max(1, round(2 * scale))
    cv2.putText(picture, label, (8, round(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), thickness + 2, cv2.LINE_AA)  # fmt: skip
    cv2.putText(picture, label, (8, round(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 0), thickness, cv2.LINE_AA)  # fmt: skip
    return picture


def predict_files(
    ensemble: Ensemble, images: list[Path], out: Path, progress=None
) -> tuple[pd.DataFrame, list[str]]:
    """Predict every image; write masks, overlays, predictions.csv (and patients.csv).
    Returns the specimen table and one message per image that could not be predicted."""
    out.mkdir(parents=True, exist_ok=True)
    rows, failures, by_patient = [], [], {}
    for path in images:
        try:
            image = read_grey(path)
            prediction = predict_specimen(ensemble, image)
        except (OSError, ValueError) as error:
            failures.append(f"{path}: {error}")
        else:
            # The threshold the model was trained and evaluated with (its config).
            cells = prediction.mask_probability > ensemble.config.threshold
            mask = cells.astype(np.uint8) * 255
            row = {
                "file": path.name,
                **summarise(prediction.pattern_probs, prediction.intensity_probs),
            }
            match = SPECIMEN_NAME.search(path.stem)
            row["patient"] = int(match.group(1)) if match else None
            row["specimen"] = int(match.group(2)) if match else None
            label = f"{row['pattern']} ({row['pattern_agreement']:.0%}), {row['intensity']}"
            cv2.imwrite(str(out / f"{path.stem}_mask.png"), mask)
            cv2.imwrite(str(out / f"{path.stem}_overlay.png"), overlay(image, mask, label))
            rows.append(row)
            if match:
                previous = by_patient.get(row["patient"], ([], []))
                by_patient[row["patient"]] = (
                    previous[0] + [prediction.pattern_probs],
                    previous[1] + [prediction.intensity_probs],
                )
        if progress is not None:
            progress(1)
    specimens = pd.DataFrame(rows)
    first = ["file", "patient", "specimen"]
    if not specimens.empty:
        specimens = specimens[first + [c for c in specimens if c not in first]]
    specimens.to_csv(out / "predictions.csv", index=False)
    if by_patient:
        patients = pd.DataFrame(
            [
                {
                    "patient": patient,
                    "specimens": len(p),
                    **summarise(np.concatenate(p), np.concatenate(i)),
                }
                for patient, (p, i) in sorted(by_patient.items())
            ]
        )
        patients.to_csv(out / "patients.csv", index=False)
    return specimens, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtl.predict",
        description="Predict cell masks, staining pattern and intensity of specimen images "
        "with an exported model (python -m study.export). Writes IMAGE_mask.png, "
        "IMAGE_overlay.png, predictions.csv (one row per specimen) and, when file names carry "
        "patient ids ({patient:05d}_p{s}.tif), patients.csv into --out.",
    )
    parser.add_argument("model", help="a model folder written by python -m study.export")
    parser.add_argument("images", nargs="+", help="specimen images (TIFF, PNG, ...)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_version_option(parser)
    args = parser.parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep
    try:
        ensemble = Ensemble(args.model, args.device)
    except (OSError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    images = [Path(p) for p in args.images]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("predicting", total=len(images))
        specimens, failures = predict_files(
            ensemble, images, Path(args.out), progress=lambda n: bar.advance(task, n)
        )
    for failure in failures:
        console.print(f"[red]error:[/red] {failure}")
    console.print(f"{len(specimens)} of {len(images)} images predicted; results in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
