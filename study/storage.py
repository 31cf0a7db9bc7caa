"""Where a study's files live on a cluster: Tune's storage and the patch store.

On one machine every path works. On a cluster every node must see the same files:

- Tune's experiment folder (`--storage`) is written by trials on every node, so it must be
  a URI (s3://, gs://, ...) or a folder on a network file system mounted at the same path on
  every node, which the user declares with `--storage-shared`: `check_storage`.
- The patch store is either such a shared folder, checked on every node before any trial
  starts (`check_store_on_nodes`), or a URI that each node copies once into a local cache and
  verifies against the content hash in its store.json (`fetch_store`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

# A URI needs a scheme of two letters or more: "C:\\data" is a Windows path, not a URI.
_MIN_SCHEME = 2


def is_uri(location: str) -> bool:
    """Whether `location` is a URI (s3://..., gs://..., file://...) rather than a plain path."""
    return len(urlparse(location).scheme) >= _MIN_SCHEME and "://" in location


def filesystem_and_path(location: str | os.PathLike) -> tuple[FileSystem, str]:
    """(pyarrow filesystem, path on it) of a folder or file given as a local path or a URI.

    A URI (s3://bucket/prefix, gs://..., file:///abs/path, anything pyarrow.fs understands)
    is resolved as Ray Tune resolves its storage_path, by pyarrow's FileSystem.from_uri, so
    that the study reads and writes the experiment exactly where its trials do. A plain path
    is on the local filesystem, made absolute ("~" expanded): pyarrow wants absolute paths.
    """
    from pyarrow import fs as pafs

    location = str(location)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def check_storage(storage_path: str, *, multi_node: bool, shared: bool = False) -> None:
    """Refuse a Tune storage path that some node of the study could not write to.

    The rule:
    - a remote URI (any scheme but file://, e.g. s3://bucket/prefix, gs://bucket/prefix) is
      accepted: every node reaches it over the network;
    - a local path or file:// URI is accepted when the study runs on one machine;
    - on a cluster (`multi_node`) a local path is accepted only when the user declares it
      `shared` (a network file system mounted at the same path on every node), and it must
      then be absolute, since a relative path resolves against each process's own folder.

    `multi_node` should be True whenever the driver joins an existing cluster (`--address`),
    not only when it has several nodes now: an autoscaling cluster starts as its head alone
    and adds GPU workers once trials ask for them, after this check has passed.
    """
    if is_uri(storage_path) and urlparse(storage_path).scheme != "file":
        return
    if not multi_node:
        return
    path = urlparse(storage_path).path if is_uri(storage_path) else storage_path
    if not shared:
        raise ValueError(
            f"--storage {storage_path} is a local folder, but this study runs on a cluster "
            "whose trials write to it from every node; each would write to its own disk. Use "
            "--storage s3://BUCKET/PREFIX (or gs://...), or a network file system mounted at "
            "the same path on every node together with --storage-shared"
        )
    if not os.path.isabs(path):
        raise ValueError(
            f"--storage {storage_path} is relative; a shared folder must be an absolute path "
            "that is the same on every node, e.g. /mnt/nfs/hep2/results"
        )


def read_store_hash(location: str) -> str:
    """The content hash recorded in the store.json of a store at a local path or a URI."""
    if not is_uri(location):  # "~/data/store" is each node's own home folder
        location = str(Path(location).expanduser())
    meta_path = f"{location.rstrip('/')}/store.json"
    try:
        if is_uri(location):
            filesystem, root = filesystem_and_path(location)
            with filesystem.open_input_stream(f"{root.rstrip('/')}/store.json") as f:
                text = f.read().decode()
        else:
            text = Path(meta_path).read_text()
    except OSError as error:  # missing file, no permission, unreachable bucket, ...
        raise FileNotFoundError(f"cannot read {meta_path}: {error}") from error
    try:
        return str(json.loads(text)["content_hash"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{meta_path} is not a patch store's metadata: {error!r}") from error


def store_cache() -> Path:
    """Where a node keeps its copies of stores given as URIs: $HEP2_CACHE or ~/.cache/hep2-mtl."""
    return Path(os.environ.get("HEP2_CACHE", "~/.cache/hep2-mtl")).expanduser() / "stores"


def fetch_store(uri: str, cache_dir: str | os.PathLike) -> Path:
    """A local path of the patch store at `uri`, copied into `cache_dir` on first use.

    A plain path (no scheme) is returned as it is: it is already local or shared. For a URI
    (s3://, gs://, file://, anything pyarrow.fs understands) the copy is keyed by the content
    hash that the store's store.json records, so a store rebuilt under the same URI is fetched
    anew and two URIs of the same content share one copy. The copy goes to a temporary folder,
    its hash is recomputed, and only a matching copy is renamed into place; a process lock
    makes the fold workers of one node download it once between them. A cached copy whose
    store.json no longer matches is removed and fetched again.
    """
    if not is_uri(uri):
        return Path(uri).expanduser()
    from pyarrow import fs as pafs

    expected = read_store_hash(uri)
    source_fs, source = filesystem_and_path(uri)
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"{Path(source.rstrip('/')).name or 'store'}-{expected}"
    target = cache_dir / name
    with _locked(cache_dir / f".{name}.lock"):
        if target.is_dir():
            if _cached_hash(target) == expected:
                return target
            shutil.rmtree(target)  # damaged or hand-edited: fetch it again
        for stale in cache_dir.glob(f".{name}.partial-*"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".{name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()  # copy_files creates only the folders of nested files
            pafs.copy_files(
                source.rstrip("/"),
                str(tmp),
                source_filesystem=source_fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            found = store_content_hash(tmp)
            if found != expected:
                raise ValueError(
                    f"the copy of {uri} has content hash {found} but its store.json records "
                    f"{expected}: the store is damaged or changed during the download; "
                    "rebuild or re-upload it (python -m mtl.data), then run again"
                )
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def store_content_hash(folder: Path) -> str:
    """Recompute a store's content hash exactly as mtl.data.store computes it when building."""
    import pandas as pd

    from mtl import content_hash

    return content_hash(folder, pd.read_parquet(folder / "index.parquet"))


def _cached_hash(folder: Path) -> str | None:
    try:
        return read_store_hash(str(folder))
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def _locked(lock_file: Path):
    """An exclusive lock between processes of one machine (released if the process dies)."""
    import fcntl  # POSIX only; imported here so that the module still imports elsewhere

    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_store_on_nodes(
    location: str, *, content_hash: str | None = None, timeout_s: float = 60.0
) -> list[str]:
    """The alive nodes of the connected Ray cluster that cannot read the store, with reasons.

    Runs one tiny task pinned to every alive node (num_cpus=0, so it also runs on a head that
    has no CPUs for Ray) that reads `location`/store.json there, a shared path or a URI, and
    compares its content hash with `content_hash` (default: the hash the driver reads). Returns
    one line per failing node, "IP (node ID): reason"; empty when every node can read it.
    Nodes an autoscaler adds later are not covered: their fold workers open the store then.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    expected = content_hash if content_hash is not None else read_store_hash(location)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_store)
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if not nodes:
        raise RuntimeError("the connected Ray cluster reports no alive node")
    pending = {
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(location, expected): node["NodeID"]
        for node in nodes
    }
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    answers: dict[str, str | None] = {}
    for ref in ready:
        try:
            answers[pending[ref]] = ray.get(ref)
        except ray.exceptions.RayError as error:  # the node died or its worker crashed
            answers[pending[ref]] = f"the check failed: {error}"
    for ref in late:
        ray.cancel(ref, force=True)
        answers[pending[ref]] = f"no answer within {timeout_s:g} s"
    return _failure_lines(nodes, answers)


def _failure_lines(nodes: list[dict], answers: dict[str, str | None]) -> list[str]:
    """Lines "IP (node ID): reason" for every node whose answer is a reason, not None."""
    lines = []
    for node in nodes:
        reason = answers.get(node["NodeID"], "no answer")
        if reason is not None:
            lines.append(f"{node['NodeManagerAddress']} ({node['NodeID']}): {reason}")
    return lines


def _probe_store(location: str, expected: str) -> str | None:
    """Run on one node: None when it reads the expected store, else the reason it cannot."""
    try:
        found = read_store_hash(location)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    if found != expected:
        return f"{location} has content hash {found} here but {expected} on the driver"
    return None
