"""study.storage: the storage rule, fetching a store from a URI into a cache, checking nodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtl import SynthSpec, build_synthetic_store
from study import storage
from study.storage import (
    check_storage,
    check_store_on_nodes,
    fetch_store,
    is_uri,
    read_store_hash,
    store_content_hash,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 30-patch synthetic store (2 patients, 64 px)."""
    path = tmp_path_factory.mktemp("remote") / "tiny"
    return build_synthetic_store(path, SynthSpec(patients=2, size=64, specimens=1, seed=0))


# --- check_storage ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["s3://bucket/prefix", "gs://bucket/prefix", "abfs://c/p"])
def test_remote_storage_is_accepted_everywhere(path):
    check_storage(path, multi_node=True)
    check_storage(path, multi_node=False)


@pytest.mark.parametrize("path", ["results", "/abs/results", "file:///abs/results"])
def test_local_storage_is_fine_on_one_machine(path):
    check_storage(path, multi_node=False)


@pytest.mark.parametrize("path", ["results", "/abs/results", "file:///abs/results"])
def test_local_storage_is_refused_on_a_cluster_with_what_to_use(path):
    with pytest.raises(ValueError) as error:
        check_storage(path, multi_node=True)
    assert "--storage s3://" in str(error.value) and "--storage-shared" in str(error.value)


def test_a_declared_shared_folder_must_be_absolute():
    check_storage("/mnt/nfs/hep2", multi_node=True, shared=True)
    check_storage("file:///mnt/nfs/hep2", multi_node=True, shared=True)
    with pytest.raises(ValueError, match="absolute"):
        check_storage("nfs/hep2", multi_node=True, shared=True)


def test_is_uri():
    assert is_uri("s3://b/p") and is_uri("file:///x") and is_uri("gs://b")
    assert not is_uri("/data/store") and not is_uri("data") and not is_uri(r"C:\data")


# --- fetch_store -----------------------------------------------------------------------------


def test_plain_path_is_returned_as_is(tmp_path):
    assert fetch_store("some/relative/store", tmp_path / "cache") == Path("some/relative/store")
    assert not (tmp_path / "cache").exists()


def test_fetch_copies_verifies_and_reuses(store, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    local = fetch_store(store.path.as_uri(), cache)
    assert local.parent == cache and store.content_hash in local.name
    assert read_store_hash(str(local)) == store.content_hash
    assert np.array_equal(np.load(local / "images.npy"), np.load(store.path / "images.npy"))
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [local.name]

    # The second call finds the verified copy and downloads nothing.
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr("pyarrow.fs.copy_files", no_download)
    assert fetch_store(store.path.as_uri(), cache) == local


def test_damaged_cache_is_fetched_again(store, tmp_path):
    cache = tmp_path / "cache"
    local = fetch_store(store.path.as_uri(), cache)
    (local / "store.json").write_text("{}")
    assert fetch_store(store.path.as_uri(), cache) == local
    assert read_store_hash(str(local)) == store.content_hash


def test_a_copy_whose_hash_does_not_match_is_refused(store, tmp_path):
    broken = tmp_path / "remote" / "broken"
    shutil.copytree(store.path, broken)
    images = np.load(broken / "images.npy")
    images[0, 0, 0] ^= 1  # one flipped bit that store.json does not know about
    np.save(broken / "images.npy", images)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="damaged or changed during the download"):
        fetch_store(broken.as_uri(), cache)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # nothing left


def test_a_rebuilt_store_under_the_same_uri_is_fetched_anew(store, tmp_path):
    remote = tmp_path / "remote" / "tiny"
    shutil.copytree(store.path, remote)
    cache = tmp_path / "cache"
    first = fetch_store(remote.as_uri(), cache)
    rebuilt = build_synthetic_store(
        remote, SynthSpec(patients=2, size=64, specimens=1, seed=1), force=True
    )
    second = fetch_store(remote.as_uri(), cache)
    assert second != first and read_store_hash(str(second)) == rebuilt.content_hash


def test_missing_store_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="store.json"):
        fetch_store((tmp_path / "nothing").as_uri(), tmp_path / "cache")


# Each child imports study.storage alone (not this module, nor torch): a second to start.
FETCH = (
    "import sys; from pathlib import Path; from study.storage import fetch_store; "
    "print(fetch_store(sys.argv[1], Path(sys.argv[2])))"
)


def test_concurrent_fetches_share_one_copy(store, tmp_path):
    cache = tmp_path / "cache"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH, store.path.as_uri(), str(cache)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    paths = {child.communicate(timeout=60)[0].strip() for child in children}
    assert [child.returncode for child in children] == [0, 0]
    assert len(paths) == 1
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [
        Path(paths.pop()).name
    ]


def test_recomputed_hash_matches_the_builder(store):
    assert store_content_hash(store.path) == store.content_hash


# --- check_store_on_nodes --------------------------------------------------------------------


def test_failure_lines_name_only_the_failing_nodes():
    nodes = [
        {"NodeID": "aa", "NodeManagerAddress": "10.0.0.1"},
        {"NodeID": "bb", "NodeManagerAddress": "10.0.0.2"},
        {"NodeID": "cc", "NodeManagerAddress": "10.0.0.3"},
    ]
    answers = {"aa": None, "bb": "cannot read /data/store.json"}
    assert storage._failure_lines(nodes, answers) == [
        "10.0.0.2 (bb): cannot read /data/store.json",
        "10.0.0.3 (cc): no answer",
    ]


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """Home folders: the head's and the first worker's, and the second worker's."""
    return tmp_path_factory.mktemp("home-shared"), tmp_path_factory.mktemp("home-other")


@pytest.fixture(scope="module")
def cluster(local_cluster, homes):
    """Two 1-CPU workers beside the 0-CPU head; the second worker has another home folder,
    so a store under "~" is on two nodes and missing on the third."""
    shared, other = (str(h) for h in homes)
    return local_cluster(
        {"num_cpus": 1, "env_vars": {"HOME": shared}},
        {"num_cpus": 1, "env_vars": {"HOME": other}},
        head={"env_vars": {"HOME": shared}},
    )


def _node_ids(ray):
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


@pytest.mark.slow  # a Ray cluster of three nodes
def test_every_node_reads_a_present_store(cluster, store):
    assert check_store_on_nodes(str(store.path)) == []
    assert check_store_on_nodes(store.path.as_uri()) == []  # a URI is read from each node too


@pytest.mark.slow  # a Ray cluster of three nodes
def test_a_missing_store_names_every_node(cluster, tmp_path):
    import ray

    bad = check_store_on_nodes(str(tmp_path / "nowhere"), content_hash="0" * 32)
    assert len(bad) == 3
    assert {line.split("(")[1].split(")")[0] for line in bad} == _node_ids(ray)
    ips = {node["NodeManagerAddress"] for node in ray.nodes()}
    assert all("store.json" in line and line.split(" ")[0] in ips for line in bad)


@pytest.mark.slow  # a Ray cluster of three nodes
def test_the_one_node_that_lacks_the_store_is_named(cluster, homes, store):
    shutil.copytree(store.path, homes[0] / "store")  # in the home of two of the three nodes
    bad = check_store_on_nodes("~/store", content_hash=store.content_hash)
    lacking = cluster.workers[1].node_id
    assert len(bad) == 1 and lacking in bad[0] and "store.json" in bad[0], bad


@pytest.mark.slow  # a Ray cluster of three nodes
def test_a_different_store_is_reported(cluster, store):
    bad = check_store_on_nodes(str(store.path), content_hash="f" * 32)
    assert len(bad) == 3 and all(store.content_hash in line for line in bad)


@pytest.mark.slow  # a Ray cluster of three nodes
def test_an_unreadable_store_json_is_reported(cluster, tmp_path):
    (tmp_path / "store.json").write_text(json.dumps({"format_version": 1}))
    bad = check_store_on_nodes(str(tmp_path), content_hash="0" * 32)
    assert len(bad) == 3 and all("not a patch store" in line for line in bad)
