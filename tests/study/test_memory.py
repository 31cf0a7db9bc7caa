"""A fold's memory: its state counted from the model, and the fold-worker figure the
placement uses, taken in order from the user, the GPU check's stored figures, a probe on a
GPU, or not measured."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtl import MultiTaskUNet, measure_step_memory, state_bytes, tiny
from study.driver import memory
from study.driver.memory import MemoryFigure, fold_memory, stored_figure
from study.spec.presets import paper, smoke

HEADER = memory.FIGURES.read_text().splitlines()[0]


def test_a_fold_s_state_is_counted_from_its_parameters():
    config = tiny()
    model = MultiTaskUNet.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    # fp32 parameters and Adam's two moments (a checkpoint); gradients too when resident.
    assert state_bytes(config) == 4 * 3 * parameters + buffers
    assert state_bytes(config, with_gradients=True) == 4 * 4 * parameters + buffers


def test_a_step_is_measured_only_on_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine measures (bench/gpu_check.sh)")
    assert measure_step_memory(tiny()) is None


def _figures(tmp_path, *rows: dict):
    path = tmp_path / "fold_memory.csv"
    columns = HEADER.split(",")
    lines = [HEADER] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(config, worker: float, resident: float, gpu: str = "NVIDIA A10G") -> dict:
    key = {k: getattr(config, k) for k in memory.MODEL_KEY}
    return {**key, "worker_gib": worker, "resident_gib": resident, "gpu": gpu,
            "date": "2026-12-01", "source": "bench/gpu_check.sh"}  # fmt: skip


def test_a_stored_figure_matches_the_model_and_takes_the_largest(tmp_path):
    configs = paper().train_configs()  # all GradNorm, one model
    path = _figures(
        tmp_path,
        _row(configs[0], 9.5, 1.3),
        _row(configs[0], 9.9, 1.3, gpu="NVIDIA L4"),
        _row(configs[0].replace(batch_size=16), 15.0, 1.3),  # another batch: not this model
    )
    figure = stored_figure(configs, path)
    assert figure == MemoryFigure(
        9.9, 1.3, "measured on NVIDIA L4 by bench/gpu_check.sh, 2026-12-01"
    )
    # A configuration without a figure (another balancer): no stored figure for the study.
    assert stored_figure([*configs, configs[0].replace(balancer="equal")], path) is None


def test_the_figure_comes_from_the_user_then_the_store_then_a_probe(tmp_path, monkeypatch):
    study = dataclasses.replace(smoke(), fold_memory_gib=None)
    counted = state_bytes(study.train, with_gradients=True) / 2**30
    monkeypatch.setattr(memory, "FIGURES", _figures(tmp_path))  # nothing stored
    probed = []

    def probe(configs, node):
        probed.append(node)
        return [{"worker_gib": 3.0, "resident_gib": 0.2, "gpu": "NVIDIA H100"}]

    monkeypatch.setattr(memory, "_probe", probe)
    given = fold_memory(dataclasses.replace(study, fold_memory_gib=10.0), ["node-1"])
    assert given == MemoryFigure(10.0, pytest.approx(counted), "--fold-memory-gib")
    assert fold_memory(study, []) == MemoryFigure(None, pytest.approx(counted), "not measured")
    assert fold_memory(study, ["node-1"]) == MemoryFigure(
        3.0, 0.2, "probed on NVIDIA H100 at study start"
    )
    assert probed == ["node-1"]
    monkeypatch.setattr(memory, "FIGURES", _figures(tmp_path, _row(study.train, 2.0, 0.1)))
    stored = fold_memory(study, ["node-1"])
    assert stored.worker_gib == 2.0 and stored.source.startswith("measured on NVIDIA A10G")
    assert probed == ["node-1"]  # a stored figure needs no probe
