"""From a study to diagnosis: a short study that learns the synthetic task, its best trial
exported, new specimens predicted with it (minutes on a 2-core CPU)."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from mtl.config import small
from mtl.data import PatchGrid, SynthSpec
from mtl.data.synthetic import generate
from mtl.model import MultiTaskUNet
from mtl.predict import Ensemble, predict_specimen, read_grey, stitch, window_offsets
from mtl.predict import main as predict_main
from study.driver.prepare import StudyRequest, prepare_data
from study.driver.tuner import run_study
from study.results.export import main as export_main
from study.results.export import trial_checkpoint
from study.spec.presets import StudyConfig


@pytest.mark.parametrize(("height", "width"), [(174, 232), (100, 64), (64, 64), (130, 200)])
def test_overlap_averaging_of_a_constant_model_leaves_no_seams(height, width):
    grid = PatchGrid().scaled_to(64)
    offsets = window_offsets(height, width, 64, grid)
    covered = np.zeros((height, width), bool)
    for top, left in offsets:
        covered[top : top + 64, left : left + 64] = True
    assert covered.all()
    constant = np.full((len(offsets), 64, 64), 0.3, np.float32)
    np.testing.assert_allclose(stitch(constant, offsets, height, width), 0.3, rtol=1e-6)


def test_the_i3a_specimen_size_uses_the_original_grid():
    offsets = window_offsets(1040, 1388, 384, PatchGrid())
    assert offsets == [PatchGrid().offset(k) for k in range(15)]
    with pytest.raises(ValueError, match="smaller than one 384x384 patch"):
        window_offsets(300, 1388, 384, PatchGrid())


def _specimens(folder: Path, patients: int, seed: int, specimens: int = 1):
    """Synthetic specimen TIFFs in the I3A naming, with their true masks and labels."""
    spec = SynthSpec(patients=patients, size=64, specimens=specimens, seed=seed)
    grid = spec.grid
    truth = {}
    rows = list(generate(spec))
    for start in range(0, len(rows), len(grid)):
        record = rows[start][0]
        image = np.zeros((grid.height, grid.width), np.uint8)
        mask = np.zeros_like(image)
        for k in range(len(grid)):  # reassemble the specimen from its 15 patches
            top, left = grid.offset(k)
            _, patch, patch_mask = rows[start + k]
            image[top : top + 64, left : left + 64] = patch
            mask[top : top + 64, left : left + 64] = patch_mask
        name = f"{record['patient']:05d}_p{record['specimen']}.tif"
        cv2.imwrite(str(folder / name), image)
        truth[name] = (mask, record["pattern"], record["intensity"])
    return truth


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ray_local):
    """A short study (2 folds, a small encoder, 60 patients, 6 epochs at 3x the small preset's
    learning rate) and its best trial exported; trained once for the learning test and the
    export and predict tests."""
    results = tmp_path_factory.mktemp("results")
    train = small().replace(device="cpu", num_folds=2, epochs=6, lr=3e-3)
    study = StudyConfig(
        name="short", train=train, synthetic=SynthSpec(patients=60, size=64, specimens=2),
        # The two folds as two one-thread actors side by side, as on a cluster: faster on
        # two cores than one process training them in turn on two threads.
        gpus_per_fold=0, cpus_per_fold=1, fold_resources={"fold_slot": 1},
    )  # fmt: skip
    assert ray_local.cluster_resources().get("fold_slot") == 2  # else Tune would wait forever
    study = prepare_data(study, results)
    run_study(StudyRequest(study, results))
    model = results / "model"
    assert export_main([str(results / "short"), "--out", str(model)]) == 0
    return results / "short", model


@pytest.mark.slow  # a study that learns
def test_the_small_encoder_learns_all_three_tasks(exported):
    """The training engine learns the synthetic task: fold A of the study, last epoch
    (fold A of 2 trains on 30 patients; 0.85 pattern accuracy when this was written)."""
    study, _ = exported
    epochs = pd.read_parquet(study / "epochs.parquet")
    val = epochs[(epochs.split == "val") & (epochs.epoch == epochs.epoch.max())]
    assert sorted(val.fold) == ["A", "B"]  # both folds of the one trial, trained in full
    a = val.set_index("fold").loc["A"]
    print(a[["pixel_acc", "pattern_acc", "intensity_acc", "patient_pattern_acc"]])
    assert a.pixel_acc >= 0.9
    assert a.pattern_acc >= 0.8  # chance: 1/7; brightness alone: below 0.4
    assert a.intensity_acc >= 0.85


@pytest.mark.slow  # a study that learns
def test_an_exported_model_predicts_new_specimens_well(exported, tmp_path):
    _, model = exported
    images = tmp_path / "images"
    images.mkdir()
    # Patients drawn with another seed: new specimens, rendered with other random numbers.
    truth = _specimens(images, patients=30, seed=7)
    out = tmp_path / "out"
    files = sorted(str(p) for p in images.iterdir())
    assert predict_main([str(model), *files, "--out", str(out)]) == 0
    predictions = pd.read_csv(out / "predictions.csv").set_index("file")
    ious, right, intensity_right = [], [], []
    for name, (mask, pattern, intensity) in truth.items():
        predicted = cv2.imread(str(out / f"{Path(name).stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
        ious.append((predicted & (mask > 0)).sum() / (predicted | (mask > 0)).sum())
        right.append(predictions.loc[name, "pattern"] == pattern)
        intensity_right.append(predictions.loc[name, "intensity"] == intensity)
        assert (out / f"{Path(name).stem}_overlay.png").exists()
    assert np.mean(ious) > 0.8, f"mask IoU {np.mean(ious):.3f}"
    assert np.mean(right) > 0.8, f"specimen pattern accuracy {np.mean(right):.3f}"
    patients = pd.read_csv(out / "patients.csv")
    assert len(patients) == 30 and set(predictions.patient) == set(patients.patient)
    print(
        f"IoU {np.mean(ious):.3f}, specimen pattern accuracy {np.mean(right):.3f}, "
        f"intensity accuracy {np.mean(intensity_right):.3f}"
    )


@pytest.mark.slow  # a study that learns
def test_export_round_trips_the_fold_models(exported):
    study, model = exported
    meta = json.loads((model / "model.json").read_text())
    assert meta["folds"] == ["A", "B"] and meta["classes"]["pattern"][0] == "homogeneous"
    assert {"torch", "segmentation_models_pytorch"} <= set(meta["versions"])
    assert len(meta["store_hash"]) == 32 and meta["cv"]["cv_score"] > 0.5
    ensemble = Ensemble(model, device="cpu")
    store_path = json.loads((study / "study.json").read_text())["train"]["data"]
    from mtl.data import open_store

    patch = np.array(open_store(store_path).images[:4])
    masks, patterns, intensities = ensemble.predict_patches(patch)
    # The same probabilities from the fold models inside the study's checkpoint.
    checkpoint = Path(trial_checkpoint(study, meta["trial_id"]).path)  # a local experiment
    outputs = []
    for fold in meta["folds"]:
        net = MultiTaskUNet.from_config(ensemble.config)
        state = torch.load(checkpoint / f"fold-{fold}.pt", weights_only=True)["model"]
        net.load_state_dict(state)
        with torch.inference_mode():
            outputs.append(net.eval()(torch.from_numpy(patch).unsqueeze(1)))
    expected = torch.stack([o.pattern.softmax(1) for o in outputs]).mean(0).numpy()
    np.testing.assert_allclose(patterns, expected, atol=1e-6)
    expected_mask = torch.stack([o.mask.sigmoid() for o in outputs]).mean(0)[:, 0].numpy()
    np.testing.assert_allclose(masks, expected_mask, atol=1e-6)


@pytest.mark.slow  # a study that learns
def test_bad_inputs_are_named_and_the_rest_still_predicted(exported, tmp_path, capsys):
    _, model = exported
    images = tmp_path / "images"
    images.mkdir()
    _specimens(images, patients=2, seed=3)
    (images / "broken.tif").write_bytes(b"not a tiff")
    cv2.imwrite(str(images / "tiny.png"), np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    files = sorted(str(p) for p in images.iterdir())
    assert predict_main([str(model), *files, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.tif" in err and "tiny.png" in err and "smaller than one 64x64 patch" in err
    assert len(pd.read_csv(out / "predictions.csv")) == 2

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in model.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / "fold-B.pt").unlink()
    assert predict_main([str(damaged), files[0], "--out", str(tmp_path / "o2")]) == 2
    assert "fold-B.pt: missing" in capsys.readouterr().err
    torch.save({"wrong": torch.zeros(1)}, damaged / "fold-B.pt")
    assert predict_main([str(damaged), files[0], "--out", str(tmp_path / "o3")]) == 2
    assert "fold-B.pt: does not fit" in capsys.readouterr().err


@pytest.mark.slow  # uses the study's exported model
def test_masks_use_the_threshold_the_model_was_trained_with(exported, tmp_path):
    _, model = exported
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["config"]["threshold"] = 0.3
    (copy / "model.json").write_text(json.dumps(meta))
    images = tmp_path / "images"
    images.mkdir()
    _specimens(images, patients=1, seed=3)
    (image,) = sorted(images.iterdir())
    out = tmp_path / "out"
    assert predict_main([str(copy), str(image), "--out", str(out)]) == 0
    ensemble = Ensemble(copy, device="cpu")
    probability = predict_specimen(ensemble, read_grey(image)).mask_probability
    written = cv2.imread(str(out / f"{image.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert ((probability > 0.3) & (probability <= 0.5)).any()  # where 0.3 and 0.5 differ
    assert np.array_equal(written == 255, probability > 0.3)
