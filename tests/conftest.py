"""Shared fixtures: tiny synthetic stores and a local Ray instance sized for a 2-core machine."""

from __future__ import annotations

from pathlib import Path

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


def start_local_ray() -> None:
    """A new local Ray sized for a 2-core machine. fold_slot lets a test place a trial's
    folds as actors without GPUs (StudyConfig.fold_resources)."""
    import ray

    ray.init(address="local", num_cpus=2, resources={"fold_slot": 2}, include_dashboard=False,
             configure_logging=False)  # fmt: skip


@pytest.fixture(scope="session")
def ray_local():
    """A fresh local Ray (never a cluster named by RAY_ADDRESS), shut down afterwards."""
    import ray

    start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_cluster():
    """start(*workers): a Ray cluster on this machine, a head with 0 CPUs (as on a real
    cluster) and one node per dict of `ray start` arguments, kept in order as
    `cluster.workers`; the driver joins it by its explicit address, never "auto". Stopped at
    the end of the module, after which the session's local Ray (ray_local) is back as
    conftest starts it.

    Ray turns a loopback address into this machine's IP before connecting, so the nodes
    keep their default IP.
    """
    import ray
    from ray.cluster_utils import Cluster

    session_ray = ray.is_initialized()
    clusters = []

    def keep_the_token(args: dict) -> dict:
        # A node given another HOME would look for Ray's auth token (enabled by the session's
        # earlier ray.init) under that HOME, and its raylet would die at start-up.
        env = args.get("env_vars", {})
        if "HOME" in env:
            token = Path.home() / ".ray" / "auth_token"
            args = {**args, "env_vars": {"RAY_AUTH_TOKEN_PATH": str(token), **env}}
        return args

    def start(*workers: dict, head: dict | None = None) -> Cluster:
        if ray.is_initialized():
            ray.shutdown()
        with pytest.MonkeyPatch.context() as patch:
            # Cluster records its address for `ray.init("auto")`; keep other processes on
            # this machine from finding (and joining) the test's cluster.
            patch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
            head_args = {"num_cpus": 0, "include_dashboard": False, **(head or {})}
            cluster = Cluster(initialize_head=True, head_node_args=keep_the_token(head_args))
        clusters.append(cluster)
        # In the order given (Cluster.worker_nodes is a set).
        cluster.workers = [cluster.add_node(**keep_the_token(args)) for args in workers]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        return cluster

    yield start
    ray.shutdown()
    for cluster in clusters:
        cluster.shutdown()
    if session_ray:
        start_local_ray()
