import dataclasses

import pytest

from mtl import parse_overrides
from study.spec.presets import PRESETS, StudyConfig, apply_overrides, get_preset, grid, paper, smoke
from study.spec.space import Choice, IntRange, LogUniform


def test_every_preset_is_a_valid_study():
    for make in PRESETS.values():
        study = make()
        assert study.num_trials >= 2 and study.max_epochs >= study.train.epochs


def test_paper_is_the_original_six_configurations():
    study = paper()
    assert [(c["seg_loss"], c["epochs"], c["alpha"]) for c in study.configurations] == [
        ("dice", 30, 0.06), ("dice", 35, 0.06), ("dice", 30, 0.12),
        ("bce", 30, 0.06), ("bce", 35, 0.06), ("bce", 30, 0.12),
    ]  # fmt: skip
    train = study.train
    assert (train.encoder, train.image_size, train.batch_size, train.lr) == (
        "efficientnet-b4", 384, 8, 1e-4,
    )  # fmt: skip
    assert (train.folds, train.augment, train.balancer, train.balancer_lr) == (
        "seed", "none", "gradnorm", 1e-4,
    )  # fmt: skip
    assert study.scheduler == "none" and not study.space and study.max_epochs == 35


def test_grid_is_the_product():
    assert grid(a=(1, 2), b=("x",)) == ({"a": 1, "b": "x"}, {"a": 2, "b": "x"})


def test_invalid_study_values_are_rejected_naming_the_field():
    base = smoke()
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        StudyConfig(name="s", train=base.train, configurations=({"alpha": -1.0},),
                    synthetic=base.synthetic)  # fmt: skip
    with pytest.raises(ValueError, match="space: 'alpah' is not a TrainConfig field"):
        StudyConfig(name="s", train=base.train, space={"alpah": LogUniform(0.1, 1)},
                    synthetic=base.synthetic)  # fmt: skip
    with pytest.raises(ValueError, match="balancer must be one of"):
        StudyConfig(name="s", train=base.train, space={"balancer": Choice(("equal", "imtl"))},
                    synthetic=base.synthetic)  # fmt: skip
    with pytest.raises(ValueError, match="IntRange"):
        IntRange(20, 42, 5)


def test_set_overrides_fields_with_their_types():
    study = apply_overrides(
        smoke(), parse_overrides(["epochs=3", "lr=0.01", "decoder_channels=8,8,8,8,8"])
    )
    assert study.train.epochs == 3 and study.train.lr == 0.01
    assert study.train.decoder_channels == (8, 8, 8, 8, 8)


def test_set_on_a_varied_field_fixes_it():
    study = apply_overrides(smoke(), parse_overrides(["seg_loss=bce"]))
    assert study.configurations == () and study.train.seg_loss == "bce"
    assert study.num_trials == 1
    search = apply_overrides(get_preset("search"), parse_overrides(["balancer=equal"]))
    assert "balancer" not in search.space and search.train.balancer == "equal"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("epochz=3", "epochz: no such field"),
        ("epochs=three", "epochs=three: not a valid int"),
        ("seg_loss=focal", "seg_loss must be one of dice, bce"),
        ("epochs", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_field(pair, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(smoke(), parse_overrides([pair]))


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="demo, smoke, paper, search"):
        get_preset("huge")


def test_test_set_repeats_and_warm_start_are_checked_before_any_work():
    base = smoke()
    with pytest.raises(ValueError, match=r"test_patients must lie in \[0, 1\)"):
        StudyConfig(name="s", train=base.train, configurations=base.configurations,
                    synthetic=base.synthetic, test_patients=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        StudyConfig(name="s", train=base.train, configurations=base.configurations,
                    synthetic=base.synthetic, repeats=0)  # fmt: skip
    # The original fold table is one fixed split: nothing to repeat.
    with pytest.raises(ValueError, match="folds='seed' is the original study's one fixed"):
        StudyConfig(name="s", train=base.train.replace(folds="seed"), repeats=3,
                    configurations=base.configurations, synthetic=base.synthetic)  # fmt: skip
    repeated = StudyConfig(name="s", train=base.train.replace(num_folds=3),
                           configurations=base.configurations, synthetic=base.synthetic,
                           repeats=2)  # fmt: skip
    assert repeated.folds == ("1A", "1B", "1C", "2A", "2B", "2C")
    with pytest.raises(ValueError, match="warm_start.*must set exactly the searched fields"):
        StudyConfig(name="s", train=base.train, space={"alpha": LogUniform(0.1, 1)},
                    warm_start=({"seg_loss": "dice"},), synthetic=base.synthetic)  # fmt: skip


def test_demo_and_search_hold_patients_out_and_paper_does_not():
    assert get_preset("demo").test_patients == 0.2
    assert get_preset("search").test_patients == 0.2
    assert paper().test_patients == 0.0
    demo = get_preset("demo")
    # The demo's first trials are the 2 x 2 of balancer and segmentation loss.
    assert {(p["balancer"], p["seg_loss"]) for p in demo.warm_start} == {
        (b, s) for b in ("equal", "gradnorm") for s in ("dice", "bce")
    }


def test_task_metrics_and_baselines_are_checked():
    with pytest.raises(ValueError, match="'iou' is not a headline metric of the seg task"):
        dataclasses.replace(smoke(), task_metrics={**smoke().task_metrics, "seg": "iou"})
    with pytest.raises(ValueError, match="one metric for each of seg, pattern, intensity"):
        dataclasses.replace(smoke(), task_metrics={"seg": "dice"})
    with pytest.raises(ValueError, match="baselines are compared with configurations that train"):
        dataclasses.replace(smoke(), baselines=True, train=smoke().train.replace(tasks="pattern"))
    with pytest.raises(
        ValueError, match=r"configurations\[2\] and the baseline \{'tasks': 'seg'\}"
    ):
        dataclasses.replace(
            smoke(), baselines=True, configurations=(*smoke().configurations, {"tasks": "seg"})
        )
    study = dataclasses.replace(smoke(), baselines=True)
    assert study.num_trials == 2 + 3 and "tasks" in study.varying
    assert [c.tasks for c in study.train_configs()[-3:]] == [("seg",), ("pattern",), ("intensity",)]
