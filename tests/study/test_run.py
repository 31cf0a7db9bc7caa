"""The smoke study end to end on a local Ray: both Parquet files, with every row."""

import json

import pandas as pd

from study.run import main


def test_smoke_study_writes_both_tables(ray_local, tmp_path, capsys):
    assert main(["--preset", "smoke", "--results", str(tmp_path)]) == 0
    out = tmp_path / "smoke"
    epochs = pd.read_parquet(out / "epochs.parquet")
    trials = pd.read_parquet(out / "trials.parquet")
    assert json.loads((out / "study.json").read_text())["name"] == "smoke"

    # 2 configurations x 5 folds x 2 epochs x 2 splits, each exactly once.
    assert len(epochs) == 2 * 5 * 2 * 2
    assert not epochs.duplicated(["trial_id", "fold", "epoch", "split"]).any()
    assert set(epochs.fold) == set("ABCDE") and set(epochs.split) == {"train", "val"}
    assert epochs.groupby("trial_id").size().tolist() == [20, 20]

    assert len(trials) == 2 and trials.trial_id.is_unique
    assert sorted(trials.seg_loss) == ["bce", "dice"]
    assert (trials.status == "completed").all() and (trials.epochs_run == 2).all()
    # The fold means in trials.parquet are those of the last epoch's validation rows.
    last = epochs[(epochs.epoch == 2) & (epochs.split == "val")]
    for trial in trials.itertuples():
        mine = last[last.trial_id == trial.trial_id]
        assert trial.cv_pattern_acc == mine.pattern_acc.mean()
        assert trial.cv_folds == 5

    printed = capsys.readouterr().out
    assert "pattern acc" in printed and "best configuration" in printed


def test_bad_override_fails_before_ray_starts(tmp_path, capsys):
    assert main(["--preset", "smoke", "--results", str(tmp_path), "--set", "alpha_x=1"]) == 2
    assert "alpha_x: no such field" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
