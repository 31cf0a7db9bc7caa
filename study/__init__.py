"""study: the orchestration of studies (Ray Tune, Optuna, the tables, the reports).

From Python: `run_preset` runs a preset or a StudyConfig and gives its typed tables back;
`load` reads the tables of many studies, `tables` those of one; `PRESETS` and `StudyConfig`
build a study (study/api.py).
Names load on first use, so `import study` starts neither Ray nor torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "run_preset": "study.api",
    "tables": "study.api",
    "StudyTables": "study.api",
    "load": "study.results.files",
    "load_results": "study.report.summary",
    "StudyConfig": "study.spec.presets",
    "PRESETS": "study.spec.presets",
    "grid": "study.spec.presets",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'study' has no public name {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
