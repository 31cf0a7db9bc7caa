"""mtl is the science and must run without the orchestration: no ray, no optuna inside."""

import ast
import pathlib
import subprocess
import sys

FORBIDDEN = {"ray", "optuna"}
MTL = pathlib.Path(__file__).resolve().parents[1] / "mtl"


def test_no_mtl_module_imports_ray_or_optuna():
    offenders = []
    for path in sorted(MTL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_importing_mtl_loads_neither():
    modules = ["mtl", "mtl.data", "mtl.model", "mtl.train", "mtl.losses", "mtl.balancing"]
    code = (
        f"import sys; import {', '.join(modules)}; print(sorted({FORBIDDEN!r} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
