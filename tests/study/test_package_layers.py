"""study/'s packages are layers: each imports only from the layers below it, never back up,
counting every import (deferred ones in functions included). docs/architecture.md draws
the same order."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Lowest first. A package may import from its own layer's package and every one before it.
LAYERS = (
    ("study.storage", "study.provenance"),  # where files are, what ran: no study imports
    ("study.spec",),  # what a study is
    ("study.results",),  # what its trials recorded, as tables
    ("study.stats",),  # the fold-paired comparison of those tables
    ("study.report",),  # report.md, its tables and figures
    ("study.trackers",),  # MLflow, W&B
    ("study.driver",),  # running it on Ray
    ("study.run", "study.api", "study.__main__", "study"),  # the command line, the API
)
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str:
    """study.driver.tuner -> study.driver; study.run -> study.run; study -> study."""
    return ".".join(module.split(".")[:2])


def upward_imports() -> list[str]:
    found = []
    for path in sorted((ROOT / "study").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        here = package_of(module)
        assert here in LEVEL, f"{module}: its package {here} has no layer in LAYERS"
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom | ast.Import):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from study import x` imports study.x; `from study.a import b`, study.a.
                names = (
                    [f"study.{a.name}" for a in node.names]
                    if node.module == "study"
                    else [node.module]
                )
            for name in names:
                if name.split(".")[0] != "study" or name == "study":
                    continue
                there = package_of(name)
                if LEVEL.get(there, -1) > LEVEL[here]:
                    found.append(f"{module} imports {name}")
    return found


def test_no_study_package_imports_from_a_layer_above_it():
    assert upward_imports() == []


def test_every_layer_is_a_package_or_module_that_exists():
    for package in LEVEL:
        name = package.removeprefix("study").lstrip(".")
        path = ROOT / "study" / name if name else ROOT / "study"
        assert path.is_dir() or path.with_suffix(".py").is_file(), package
