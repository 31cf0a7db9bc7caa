"""What is read is checked: a truncated or resized store array is named when the store is
opened, and `python -m mtl.data verify` recomputes the content hash."""

import numpy as np
import pytest

from mtl.data import SynthSpec, build_synthetic_store, open_store
from mtl.data.__main__ import main as data_main


@pytest.fixture
def store(tmp_path):
    return build_synthetic_store(
        tmp_path / "store", SynthSpec(patients=10, size=64, specimens=1, seed=0)
    ).path


def test_a_truncated_array_is_named_when_the_store_is_opened(store):
    path = store / "masks.npy"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"masks.npy is truncated: [\d,]+ bytes of [\d,]+"):
        open_store(store)


def test_an_array_of_another_shape_is_named(store):
    np.save(store / "images.npy", np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"images.npy holds uint8 \(3, 64, 64\), but the store"):
        open_store(store)


def test_verify_recomputes_the_content_hash(store, capsys):
    assert data_main(["verify", str(store)]) == 0
    assert "intact" in capsys.readouterr().out
    path = store / "images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern, same length: only the hash can tell
    path.write_bytes(bytes(data))
    open_store(store)  # the sizes are right
    assert data_main(["verify", str(store)]) == 1
    assert "content hash" in capsys.readouterr().err
