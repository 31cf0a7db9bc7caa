"""Shared fixtures: tiny synthetic stores, a local Ray instance sized for a 2-core machine,
Ray clusters on this machine, an S3 protocol server on loopback, and a real smoke study
trained once per session: `python -m study.run --preset smoke` as a user runs it (main),
read by every test that needs a really trained study (a test that changes it works on a
copy, smoke_copy)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtl.config import tiny
from mtl.data import SynthSpec, build_synthetic_store

if "PYTEST_XDIST_WORKER" in os.environ:
    # A pytest-xdist worker (make test-fast) inherits COLUMNS=80 with no terminal behind it;
    # the output the tests read is what a pipe gets, as in a run without workers.
    os.environ.pop("COLUMNS", None)


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


@dataclass(frozen=True)
class S3Server:
    """An S3 protocol server with one bucket; `env` points AWS clients at it."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def uri(self, name: str) -> str:
        """s3://BUCKET/NAME-RANDOM: a prefix of its own for each use (the bucket is shared)."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def s3():
    """A real S3 protocol server (moto's server mode, on loopback only) with the bucket
    `labbucket`, as Ray's own tests use one: pyarrow's S3 filesystem, Ray's storage and
    checkpoints speak the real protocol to it, nothing is mocked in this process. Until the
    module ends this process's environment points every AWS client at it (AWS_ENDPOINT_URL,
    test credentials); processes started meanwhile inherit that, but a Ray already running
    (ray_local) does not: its trials would not find the server (use ray_s3 or start Ray
    after this fixture)."""
    moto_server = pytest.importorskip("moto.server", reason="pip install -e '.[dev]'")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",  # pyarrow (FileSystem.from_uri) and boto3
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no credentials probe of a cloud's metadata
    }
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            boto3.client("s3").create_bucket(Bucket="labbucket")
            yield S3Server(endpoint=env["AWS_ENDPOINT_URL"], bucket="labbucket", env=env)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_s3(s3):
    """A local Ray started after `s3` pointed the environment at the server, so that its
    trial and fold processes (which inherit the environment of the Ray that starts them)
    reach it. The session's Ray (ray_local), if it was running, is started again afterwards,
    without the server's environment."""
    import ray

    session_ray = ray.is_initialized()
    ray.shutdown()
    start_local_ray()
    yield ray
    ray.shutdown()
    if session_ray:
        with pytest.MonkeyPatch.context() as patch:
            for name in s3.env:
                patch.delenv(name, raising=False)
            start_local_ray()


@dataclass(frozen=True)
class SmokeStudy:
    results: Path  # RESULTS: the study in RESULTS/smoke, its synthetic data in RESULTS/data
    printed: str  # what main() printed

    @property
    def folder(self) -> Path:
        return self.results / "smoke"


@pytest.fixture(scope="session")
def smoke_study(ray_local, tmp_path_factory) -> SmokeStudy:
    """RESULTS/smoke: `--preset smoke` run by main() to the end (2 configurations x 5 folds x
    2 epochs, really trained on the CPU). Read only: copy it (smoke_copy) to change it."""
    from study.run import main

    results = tmp_path_factory.mktemp("smoke-results")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the console prints to sys.stdout
        status = main(["--preset", "smoke", "--results", str(results)])
    assert status == 0, printed.getvalue()
    return SmokeStudy(results, printed.getvalue())


@pytest.fixture
def smoke_copy(smoke_study, tmp_path) -> Path:
    """A copy of the session's smoke study and its data, in RESULTS = tmp_path, to change."""
    shutil.copytree(smoke_study.results, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def scripted_cli(monkeypatch):
    """scripted_cli(Trainer): main(), the command line, trains its study's folds with
    Trainer (a scripted stand-in for FoldTrainer), for tests of what the driver does."""
    import study.run

    def use(trainer: type) -> None:
        asked = study.run.request
        monkeypatch.setattr(
            study.run, "request", lambda args: dataclasses.replace(asked(args), trainer=trainer)
        )

    return use
