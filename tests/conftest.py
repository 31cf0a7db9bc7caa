"""Shared fixtures: tiny synthetic stores and a local Ray instance sized for a 2-core machine."""

from __future__ import annotations

import pytest

from mtl.config import tiny
from mtl.data import SynthSpec, build_synthetic_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """10 synthetic patients, one specimen each, 64 px: 150 patches."""
    path = tmp_path_factory.mktemp("stores") / "tiny"
    return build_synthetic_store(path, SynthSpec(patients=10, size=64, specimens=1, seed=0))


@pytest.fixture
def tiny_config(tiny_store):
    return tiny().replace(data=str(tiny_store.path))


@pytest.fixture(scope="session")
def ray_local():
    """A fresh local Ray (never a cluster named by RAY_ADDRESS), shut down afterwards."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
