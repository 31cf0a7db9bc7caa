"""What keeps a study folder sound while a driver runs it: one driver at a time, a folder
that can take the results, and a stop on SIGINT or SIGTERM that loses nothing.

- `study_lock(folder)`: an OS lock (flock) on RESULTS/NAME/.lock, held while the driver
  runs. It dies with the process, so a crashed driver leaves nothing to clean up; a second
  driver on the same folder is refused at once with the holder's process and host.
- `check_results_folder(folder)`: a read-only or nearly full disk is an error before any
  training, not a failed write an hour later.
- `graceful_stop()`: SIGTERM (what cluster schedulers send) stops the study as Ctrl-C does:
  Tune ends the trials and saves its state, the tables and report are written for what
  finished, and `--resume` continues.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from study.provenance import now

LOCK = ".lock"
MIN_FREE_GIB = 1.0  # checkpoints of a B4 trial's five folds take about 0.5 GB


class StudyBusyError(RuntimeError):
    """Another driver runs this study."""


class StudyInterrupted(Exception):
    """The study stopped on SIGINT or SIGTERM; its tables hold what finished."""

    def __init__(self, signum: int, unfinished: int):
        self.signum, self.unfinished = signum, unfinished
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name}: {unfinished} trial(s) unfinished; the tables and report hold "
            "what finished; rerun the same command with --resume to continue"
        )

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextlib.contextmanager
def study_lock(folder: Path) -> Iterator[None]:
    """Hold FOLDER's lock for the block (taken once, by study.driver.prepare)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = path.read_text().strip() or "another process"
        raise StudyBusyError(
            f"{folder} is being run by {holder}; wait for it to finish or stop it (its lock "
            "goes with the process, so a crashed run needs no clean-up)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {now()}\n".encode())
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def check_results_folder(folder: Path) -> None:
    """Refuse a results folder that cannot be written or has under MIN_FREE_GIB free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as error:
        raise OSError(f"the results folder {folder} cannot be written: {error}") from None
    free = shutil.disk_usage(folder).free / 2**30
    if free < MIN_FREE_GIB:
        raise OSError(
            f"the results folder {folder} has {free:.2f} GiB free, under {MIN_FREE_GIB:g} GiB: "
            "free some space or choose another --results"
        )


@contextlib.contextmanager
def graceful_stop() -> Iterator[list[int]]:
    """Within the block, SIGTERM acts as SIGINT does (Tune's handler, installed by fit, stops
    the trials and saves the experiment). Yields the list of signals received (SIGTERM only;
    a SIGINT is seen from the trials left unfinished)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_term(signum, frame):
        received.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
