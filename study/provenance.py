"""What produced a result: the code, the libraries, the GPU, the command, the data.

`environment()` is measured where it matters: in every fold worker, where the training runs
(a worker node may differ from the driver), and once per run of the driver for study.json.
"""

from __future__ import annotations

import functools
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGE = "hep2-mtl"
ROOT = Path(__file__).resolve().parent.parent


def now() -> str:
    """The time, UTC, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.cache
def code_version() -> tuple[str, bool | None]:
    """(git commit, whether the tree had uncommitted changes) of a checkout; else the
    installed package's version and None."""
    try:
        run = functools.partial(
            subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        try:
            return metadata.version(PACKAGE), None
        except metadata.PackageNotFoundError:
            return "unknown", None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(code: tuple[str, bool | None] | None = None) -> dict:
    """The code and library versions of this process, and its GPU's model (None without).

    `code`: the code version (commit, dirty) to record instead of this process's own: a
    trial gets the driver's, so that every trial names the code the study ran, whatever a
    node's own copy holds.
    """
    import torch

    commit, dirty = code or code_version()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "code_version": commit,
        "code_dirty": dirty,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # not TorchVersion: unpickling that imports torch
        "cuda": torch.version.cuda,
        "smp": _version("segmentation-models-pytorch"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "gpu": gpu,
    }


def command() -> str:
    """The command line of this process, as a shell would take it back."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["python", "-m", spec.name] if spec and spec.name else ["python", sys.argv[0]]
    return shlex.join([*program, *sys.argv[1:]])
