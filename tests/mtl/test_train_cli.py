import pandas as pd
import torch

from mtl.train import main


def test_one_fold_from_the_command_line(tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", str(tiny_store.path), "--fold", "C", "--preset", "tiny", "--out", str(out)]
    assert main([*argv, "--set", "epochs=1"]) == 0
    assert "pattern" in capsys.readouterr().out
    first = pd.read_parquet(out / "epochs.parquet")
    assert list(first[["fold", "epoch", "split"]].itertuples(index=False, name=None)) == [
        ("C", 1, "train"),
        ("C", 1, "val"),
    ]
    assert torch.load(out / "fold-C.pt", weights_only=True)["epoch"] == 1

    # Resume for a second epoch: the table keeps epoch 1 and gains epoch 2.
    assert main([*argv, "--set", "epochs=2", "--resume", str(out / "fold-C.pt")]) == 0
    both = pd.read_parquet(out / "epochs.parquet")
    assert both.epoch.tolist() == [1, 1, 2, 2]
    pd.testing.assert_frame_equal(both.iloc[:2], first)


def test_bad_input_is_a_clear_error(tiny_store, tmp_path, capsys):
    argv = ["--data", str(tiny_store.path), "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert main([*argv, "--fold", "Z"]) == 2
    assert "fold must be one of A, B, C, D, E" in capsys.readouterr().out
    assert main([*argv, "--fold", "A", "--set", "epochs=zero"]) == 2
    assert "epochs=zero: not a valid int" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
