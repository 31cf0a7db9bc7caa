"""The training engine learns the synthetic task (minutes on a 2-core CPU)."""

from mtl.config import small
from mtl.data import SynthSpec, build_synthetic_store
from mtl.train import train_fold


def test_a_small_encoder_learns_all_three_tasks(tmp_path):
    store = build_synthetic_store(
        tmp_path / "store", SynthSpec(patients=60, size=64, specimens=2, seed=0)
    )
    config = small().replace(data=str(store.path), device="cpu")
    *_, last = train_fold(config, "A")
    val = last.val
    print(
        f"val: pixel {val.pixel_acc:.3f} pattern {val.pattern_acc:.3f} "
        f"intensity {val.intensity_acc:.3f} patient pattern {val.patient_pattern_acc:.3f}"
    )
    assert val.pixel_acc >= 0.9
    assert val.pattern_acc >= 0.8  # chance: 1/7; brightness alone: below 0.4
    assert val.intensity_acc >= 0.85
