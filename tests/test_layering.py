"""The layering holds: mtl is the science and runs without the orchestration (no ray, no
optuna, no study inside); study, the benches and study's tests use only mtl's public names
(`mtl.__all__`, imported from `mtl`); and no module imports itself back through others."""

import ast
import pathlib
import pickle
import subprocess
import sys

import mtl

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN_IN_MTL = {"ray", "optuna", "study"}
PACKAGES = ("mtl", "study")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.Module):
    """(module, names) of every import that runs when the module is imported: not those in
    functions (deliberately deferred) nor under `if TYPE_CHECKING:` (never run)."""

    def walk(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, []
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try | ast.With):
                yield from walk(node.body)

    yield from walk(tree.body)


def all_imports(tree: ast.Module):
    """(module, names) of every absolute import anywhere in the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports at import time."""
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    modules = {module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for imported, names in top_level_imports(ast.parse(path.read_text())):
            # `from package import submodule` imports the submodule.
            targets = [imported] + [f"{imported}.{n}" for n in names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as a path that returns to its start, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def private_mtl_imports(path: pathlib.Path) -> list[str]:
    """Imports of mtl in `path` that are not `from mtl import <public name>`."""
    bad = []
    for module, names in all_imports(ast.parse(path.read_text())):
        if module != "mtl" and not module.startswith("mtl."):
            continue
        if module != "mtl":
            bad.append(f"{path.name}: {module} (import public names from mtl itself)")
        bad += [f"{path.name}: mtl.{n} is not public" for n in names if n not in mtl.__all__]
    return bad


def test_no_mtl_module_imports_ray_optuna_or_study():
    offenders = []
    for path in sorted((ROOT / "mtl").rglob("*.py")):
        for module, _ in all_imports(ast.parse(path.read_text())):
            if module.split(".")[0] in FORBIDDEN_IN_MTL:
                offenders.append(f"{path.name}: {module}")
    assert not offenders


def test_importing_mtl_loads_neither():
    modules = ["mtl", "mtl.data", "mtl.model", "mtl.trainer", "mtl.losses", "mtl.balancing"]
    loaded = "sorted({'ray', 'optuna'} & set(sys.modules))"
    code = f"import sys; import {', '.join(modules)}; print({loaded})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reading_results_needs_no_torch():
    """The schema (metric records, lists, score, columns) is importable without torch."""
    code = "import sys; from mtl import SCORE_METRICS, EpochMetrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_trial_whose_folds_are_actors_needs_no_torch():
    """The trainable and the fold worker's module load no torch: a trial process whose folds
    are actors never does (the folds import it where they are made, with their versions)."""
    code = "import sys, study.driver.trial; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # The versions a fold worker sends back, unpickled in the trial: plain strings, no torch.
    from study.provenance import environment

    sent = pickle.dumps(environment())
    code = "import pickle, sys; pickle.load(sys.stdin.buffer); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], input=sent, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "False"


def test_a_fold_with_a_model_free_trainer_needs_no_torch(tiny_store):
    """A fold worker stepping mtl.ScriptedTrainer (the tests' and benches' studies), as a
    trial's process or a fold actor runs it: it trains, checkpoints, restores and reports
    its versions without loading torch (seconds of every such process)."""
    code = f"""if True:
        import sys
        from mtl import ScriptedTrainer, tiny
        from study.driver.folds import FoldWorker, TrialSetup
        config = tiny().replace(data={str(tiny_store.path)!r}, epochs=2)
        setup = TrialSetup(base=config, folds=("A",), score_metrics=(), trainer=ScriptedTrainer,
                           store_hash={tiny_store.content_hash!r}, fold_log="")
        fold = FoldWorker(config, "A", setup)
        metrics, where = fold.run_epoch()
        state = fold.state()
        fold.run_epoch()
        fold.load(state)
        versions = fold.versions()
        print(metrics.epoch, where["device"], fold.trainer.epoch, versions["gpu"],
              bool(versions["torch"]), "torch" in sys.modules)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "cpu", "1", "None", "True", "False"]


def test_a_configuration_is_made_and_checked_without_torch():
    """The names of the closed fields are the config's own: making, changing and refusing a
    configuration loads none of the torch code that builds what it names."""
    code = (
        "import sys; from mtl.config import TrainConfig\n"
        "TrainConfig().replace(balancer='gradnorm', seg_loss='bce', head='pool')\n"
        "try: TrainConfig(balancer='imtl')\n"
        "except ValueError as refused: print(refused)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    refusal, torch_loaded = out.stdout.strip().splitlines()
    assert refusal.startswith("balancer must be one of equal, gradnorm")
    assert torch_loaded == "False"


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_study_bench_and_study_tests_use_only_mtl_public_names():
    paths = [
        *sorted((ROOT / "study").rglob("*.py")),
        *sorted((ROOT / "bench").glob("*.py")),
        *sorted((ROOT / "tests" / "study").glob("*.py")),
    ]
    offenders = [line for path in paths for line in private_mtl_imports(path)]
    assert not offenders, offenders


def test_the_bench_tests_use_only_mtl_public_names():
    assert not private_mtl_imports(ROOT / "tests" / "test_bench.py")


def test_the_type_checking_imports_are_the_public_names():
    """mtl/__init__.py's `if TYPE_CHECKING:` imports are its public table, module for module."""
    tree = ast.parse((ROOT / "mtl" / "__init__.py").read_text())
    (block,) = [
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    ]
    imported = {alias.name: node.module for node in block.body for alias in node.names}
    assert imported == mtl._PUBLIC


def test_the_public_name_check_catches_private_imports(tmp_path):
    source = tmp_path / "user.py"
    source.write_text("from mtl.trainer import FoldTrainer\nfrom mtl import _PUBLIC, TrainConfig\n")
    assert private_mtl_imports(source) == [
        "user.py: mtl.trainer (import public names from mtl itself)",
        "user.py: mtl._PUBLIC is not public",
    ]


def test_every_public_name_resolves():
    for name in mtl.__all__:
        assert getattr(mtl, name) is not None, name


def test_the_commands_that_need_no_model_load_no_torch():
    """`python -m study.run --help` and making, importing and checking a store answer in a
    fraction of a second: neither the driver's command line nor mtl.data's store code
    imports torch (the trials' processes do)."""
    code = (
        "import sys; import study.run, mtl.data.__main__\n"
        "from mtl.data import open_store, split_rows, build_synthetic_store\n"
        "print(sorted({'torch', 'albumentations', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
