"""What a study is apart from how it runs: a resume may change the resources, concurrency,
storage and device, and is recorded in study.json's runs[]; another training field or other
data is another study. The driver's code version names every trial; the disk a study's
checkpoints need is checked before any training; `--keep-checkpoints N` keeps N trials'."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray.cloudpickle
import torch

from mtl import build_synthetic_store
from study import provenance
from study.driver import memory
from study.driver.memory import DiskNeed, check_disk, disk_need
from study.driver.prepare import PreparedStudy, StudyRequest, check_resumable, prepare_data
from study.driver.tuner import run_study, write_study_file
from study.results.export import export
from study.run import main
from study.spec.presets import paper, smoke
from study.storage import read_store_hash
from tests.study.test_scheduling import ScriptedTrainer

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers can't import tests


@pytest.fixture
def recorded(tmp_path):
    """The smoke study prepared, with its study.json written as a first run writes it."""
    study = prepare_data(smoke(), tmp_path)
    folder = tmp_path / study.name
    folder.mkdir()
    placement = SimpleNamespace(plan=SimpleNamespace(describe=lambda: "folds in one process"))
    write_study_file(
        PreparedStudy(
            study,
            folder,
            str(folder),
            resume=False,
            store_hash=store_hash(study),
            placement=placement,
            trackers=(),
            verbose=False,
            trainer=None,
        )  # fmt: skip
    )
    return study, folder


def store_hash(study) -> str:
    return read_store_hash(study.train.data)


@pytest.mark.parametrize(
    "change",
    [
        {"max_concurrent": 3},
        {"cpus_per_fold": 1.0},
        {"gpus_per_fold": 0.5},
        {"fold_memory_gib": 10.0},
        {"keep_checkpoints": 4},
        {"max_failures": 0},
    ],
)
def test_a_resume_may_change_how_the_study_runs(recorded, change):
    study, folder = recorded
    assert check_resumable(dataclasses.replace(study, **change), folder, True, store_hash(study))


def test_a_resume_may_move_the_data_and_the_device(recorded, tmp_path):
    study, folder = recorded
    moved = tmp_path / "elsewhere"
    Path(study.train.data).rename(moved)  # the same store, at another path
    train = study.train.replace(data=str(moved), device="cuda", num_workers=4)
    moved_study = dataclasses.replace(study, train=train)
    assert check_resumable(moved_study, folder, True, store_hash(moved_study))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"train": {"epochs": 3}}, "train.epochs"),
        ({"train": {"lr": 0.5}}, "train.lr"),
        ({"seed": 7}, "seed"),
        ({"configurations": ({"seg_loss": "dice"},)}, "configurations"),
    ],
)
def test_a_resume_with_another_study_field_is_refused_naming_it(recorded, change, field):
    study, folder = recorded
    if "train" in change:
        change = {"train": study.train.replace(**change["train"])}
    with pytest.raises(ValueError, match=rf"holds another study: {field} differ"):
        check_resumable(dataclasses.replace(study, **change), folder, True, store_hash(study))


def test_a_resume_on_other_data_is_refused(recorded, tmp_path):
    study, _ = recorded
    spec = dataclasses.replace(study.synthetic, seed=5)
    other = build_synthetic_store(tmp_path / "other", spec)
    with pytest.raises(ValueError, match="data with content hash"):
        check_resumable(
            dataclasses.replace(study, train=study.train.replace(data=str(other.path))),
            tmp_path / study.name,
            resume=True,
            store_hash=other.content_hash,
        )


# --- disk ----------------------------------------------------------------------------------


def test_the_disk_estimate_counts_what_the_study_keeps_at_once():
    need = disk_need(paper(), trials_at_once=2)
    # EfficientNet-B4 with its flatten heads: 86 M parameters, each with Adam's two moments.
    assert need.checkpoint_gib == pytest.approx(0.965, abs=0.005)
    assert (need.folds, need.running, need.kept) == (5, 2, 1)
    assert need.gib == pytest.approx(need.checkpoint_gib * 5 * (2 * 2 + 1))
    # keep_checkpoints 0 drops nothing: every trial of the six keeps its two, at the end.
    for at_once, running in ((8, 6), (1, 1)):  # never more running than trials
        keep_all = disk_need(dataclasses.replace(paper(), keep_checkpoints=0), at_once)
        assert keep_all.running == running and keep_all.kept == 6 - running
        assert keep_all.gib == pytest.approx(need.checkpoint_gib * 5 * 6 * 2)


def test_a_disk_that_cannot_hold_the_checkpoints_is_refused_with_the_figures(tmp_path, monkeypatch):
    need = DiskNeed(checkpoint_gib=1.0, folds=5, running=2, kept=1)
    monkeypatch.setattr(memory, "free_gib", lambda folder: 24.0)
    with pytest.raises(OSError) as error:
        check_disk(str(tmp_path / "not-yet"), need)
    message = str(error.value)
    assert (
        "25.0 GiB of checkpoints at once (5 folds x 1 GiB x (2 running trial(s) x 2 + 1 kept))"
        in message
    )
    assert "24.0 GiB free" in message and "--keep-checkpoints" in message
    check_disk("s3://bucket/prefix", need)  # remote storage is not a local disk
    monkeypatch.setattr(memory, "free_gib", lambda folder: 26.0)
    check_disk(str(tmp_path), need)


# --- whole studies ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_study_resumes_with_other_run_settings_and_records_them(
    ray_local, tmp_path, monkeypatch
):
    """The issue's case: `--resume --cpus-per-fold 1` (and other concurrency) after a
    finished study; and the driver's commit names every trial, as on a cluster whose nodes
    have no .git."""
    monkeypatch.setattr(provenance, "code_version", lambda: ("0123abc", True))
    study = prepare_data(smoke(), tmp_path)
    run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))
    before = pd.read_parquet(tmp_path / "smoke" / "epochs.parquet")
    argv = ["--preset", "smoke", "--results", str(tmp_path), "--resume", "--no-figures"]
    assert main([*argv, "--cpus-per-fold", "1", "--max-concurrent", "2"]) == 0
    assert main([*argv, "--gpus-per-fold", "0"]) == 0
    record = json.loads((tmp_path / "smoke" / "study.json").read_text())
    runs = record["provenance"]["runs"]
    assert len(runs) == 3 and all(r["ended"] for r in runs)
    assert [r["settings"]["cpus_per_fold"] for r in runs] == ["auto", 1.0, "auto"]
    assert [r["settings"]["max_concurrent"] for r in runs] == [0, 2, 0]
    assert [r["settings"]["gpus_per_fold"] for r in runs] == ["auto", "auto", 0.0]
    assert runs[0]["settings"]["placement"].startswith("folds in the trial's process")
    assert record["gpus_per_fold"] == 0.0  # the top level: as it ran last
    after = pd.read_parquet(tmp_path / "smoke" / "epochs.parquet")
    pd.testing.assert_frame_equal(before, after)  # nothing trained again
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert (trials.code_version == "0123abc").all() and trials.code_dirty.all()
    assert runs[0]["code_version"] == "0123abc"


@pytest.mark.slow
def test_a_study_refused_for_its_disk_writes_nothing(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "free_gib", lambda folder: 0.0)
    study = prepare_data(smoke(), tmp_path)
    with pytest.raises(OSError, match="disk: the study keeps up to"):
        run_study(StudyRequest(study, tmp_path, trainer=ScriptedTrainer))
    assert not (tmp_path / "smoke" / "study.json").exists()


class ExportableTrainer(ScriptedTrainer):
    """ScriptedTrainer whose Dice trials score above its BCE trials, with a model in its state
    for study.results.export to write."""

    def score(self) -> float:
        return (0.6 if self.config.seg_loss == "dice" else 0.5) + 0.01 * self.epoch

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model": {"weight": torch.full((2,), self.score())}}


@pytest.mark.slow
def test_keep_checkpoints_2_lets_the_second_best_trial_export(ray_local, tmp_path, scripted_cli):
    scripted_cli(ExportableTrainer)  # the command line as given; keeping is the driver's
    argv = ["--preset", "smoke", "--results", str(tmp_path), "--no-figures"]
    assert main([*argv, "--keep-checkpoints", "2"]) == 0
    # --no-figures: the report without its PNGs.
    assert (tmp_path / "smoke" / "report.md").is_file()
    assert not list((tmp_path / "smoke").glob("*.png"))
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    second = trials.sort_values("cv_score").trial_id.iloc[0]
    assert trials.set_index("trial_id").at[second, "seg_loss"] == "bce"  # not the best
    model = export(tmp_path / "smoke", tmp_path / "second", trial=second)
    assert json.loads((model / "model.json").read_text())["trial_id"] == second
    assert sorted(p.name for p in model.glob("fold-*.pt")) == [f"fold-{f}.pt" for f in "ABCDE"]
