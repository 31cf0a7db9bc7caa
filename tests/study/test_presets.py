import pytest

from study.presets import apply_overrides, demo, get_preset, smoke


def test_presets_build_valid_studies():
    for study in (demo(), smoke()):
        assert len(study.configurations()) == 2


def test_set_overrides_fields_with_their_types():
    study = apply_overrides(smoke(), ["epochs=3", "lr=0.01", "decoder_channels=8,8,8,8,8"])
    assert study.train.epochs == 3 and study.train.lr == 0.01
    assert study.train.decoder_channels == (8, 8, 8, 8, 8)


def test_set_on_a_grid_field_fixes_it():
    study = apply_overrides(smoke(), ["seg_loss=bce"])
    assert study.configurations() == [{}] and study.train.seg_loss == "bce"


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
        apply_overrides(smoke(), [pair])


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="demo, smoke"):
        get_preset("huge")
