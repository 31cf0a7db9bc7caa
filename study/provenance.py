"""What produced a result: the code, the libraries, the GPU, the command, the data.

`environment()` is measured where it matters: in every fold worker, where the training runs
(a worker node may differ from the driver), and once per run of the driver for study.json.
"""

from __future__ import annotations

import functools
import importlib.util
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


def torch_build() -> tuple[str | None, str | None]:
    """torch's version and the CUDA version it was built for (None: none, or no torch), read
    from torch/version.py without importing torch (seconds), which a process that never
    needed torch would otherwise load only to say so."""
    if "torch" in sys.modules:
        import torch

        return str(torch.__version__), torch.version.cuda  # str: see environment()
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    version = importlib.util.spec_from_file_location("_torch_version", path)
    module = importlib.util.module_from_spec(version)
    version.loader.exec_module(module)  # a few assignments of strings
    return module.__version__, module.cuda


def environment(code: tuple[str, bool | None] | None = None, *, gpu: bool = True) -> dict:
    """The code and library versions of this process, and its GPU's model (None without).

    `code`: the code version (commit, dirty) to record instead of this process's own: a
    trial gets the driver's, so that every trial names the code the study ran, whatever a
    node's own copy holds. `gpu=False`: the process uses no GPU (a model-free trainer's), so
    torch is not loaded to ask for one, and the GPU is None.
    """
    commit, dirty = code or code_version()
    torch_version, cuda = torch_build()
    model = None
    if gpu:
        import torch

        model = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "code_version": commit,
        "code_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch_version,  # a str, not TorchVersion: unpickling that imports torch
        "cuda": cuda,
        "smp": _version("segmentation-models-pytorch"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "gpu": model,
    }


def command() -> str:
    """The command line of this process, as a shell would take it back."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["python", "-m", spec.name] if spec and spec.name else ["python", sys.argv[0]]
    return shlex.join([*program, *sys.argv[1:]])
