"""One driver per study folder; a folder that cannot take the results is refused first."""

import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest

import study.driver.guard
from study.driver.guard import (
    StudyBusyError,
    StudyInterrupted,
    check_results_folder,
    graceful_stop,
    study_lock,
)

HOLD = """
import sys, time
from pathlib import Path
from study.driver.guard import study_lock
with study_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_process_is_refused_and_a_dead_holder_needs_no_clean_up(tmp_path):
    folder = tmp_path / "study"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyBusyError, match=f"process {holder.pid} on "), study_lock(folder):
            pass
    finally:
        holder.kill()  # as a crash would: no clean-up
        holder.wait()
    # The lock went with the process. It is taken once per study (study.driver.prepare): a
    # second taking, even in the same process, is refused.
    with study_lock(folder):
        assert f"process {os.getpid()}" in (folder / ".lock").read_text()
        with pytest.raises(StudyBusyError), study_lock(folder):
            pass


def test_a_read_only_or_full_results_folder_is_refused(tmp_path, monkeypatch):
    check_results_folder(tmp_path / "ok")
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(study.driver.guard.shutil, "disk_usage", lambda _: Usage(10, 10, 2**20))
    with pytest.raises(OSError, match="0.00 GiB free"):
        check_results_folder(tmp_path / "full")
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(study.driver.guard.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(OSError, match="cannot be written: .*Read-only"):
        check_results_folder(tmp_path / "ro")


def test_sigterm_stops_as_sigint_does():
    stopped = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    try:
        with graceful_stop() as received:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert received == [signal.SIGTERM] and stopped == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert StudyInterrupted(signal.SIGINT, 1).exit_status == 130
    assert StudyInterrupted(signal.SIGTERM, 1).exit_status == 143
