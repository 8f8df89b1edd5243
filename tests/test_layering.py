"""Imports flow one way: errors/config -> data -> models -> saved_model -> training, evaluation ->
retrieval -> serving -> cli. A module may import its own layer or a lower one, never a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "recsys"
LAYERS = {
    "recsys": 0, "recsys.errors": 0, "recsys.config": 0, "recsys.cpus": 0, "recsys.durable": 0,
    "recsys.history_store": 0,
    "recsys.data": 1,
    "recsys.models": 2,
    "recsys.saved_model": 3, "recsys.run_config": 3,
    "recsys.evaluation": 4, "recsys.training": 4,
    "recsys.retrieval": 5,
    "recsys.serving": 6,
    "recsys.cli": 7,
}
# Deliberate exceptions, each (importing module, imported module) with its reason in a comment above it.
# None is needed today; `test_allowed_exceptions_are_real_and_needed` checks that any added later is real.
ALLOWED: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module}: not assigned to a layer in this test")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recsys"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recsys"):
            found.add(node.module)
    return found


def test_imports_flow_downwards() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for target in imports_of(path):
            if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def module_path(module: str) -> Path | None:
    """The file of `module` (a module's .py, a package's __init__.py), None when there is none."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_exists(module: str) -> bool:
    """A module, a package, or a namespace package (a folder of modules without __init__.py: recsys.training)."""
    folder = PACKAGE.parent.joinpath(*module.split("."))
    return module_path(module) is not None or (folder.is_dir() and any(folder.glob("*.py")))


def stale_exceptions(allowed: set[tuple[str, str]]) -> list[str]:
    """Why each entry of `allowed` should not be there: a module that does not exist, an import the module
    does not make, or an import that does not go upwards (allowed without an exception)."""
    problems = []
    for module, target in sorted(allowed):
        path = module_path(module)
        if path is None:
            problems.append(f"{module}: no such module")
        elif not module_exists(target):
            problems.append(f"{target} (imported by {module}): no such module")
        elif target not in imports_of(path):
            problems.append(f"{module} does not import {target}")
        elif layer_of(target) <= layer_of(module):
            problems.append(f"{module} -> {target} goes downwards or sideways: no exception needed")
    return problems


def test_allowed_exceptions_are_real_and_needed() -> None:
    assert not stale_exceptions(ALLOWED), "\n".join(stale_exceptions(ALLOWED))


def test_stale_exceptions_are_found() -> None:
    assert stale_exceptions({
        ("recsys.evaluation.runner", "recsys.training.run_config"),  # an old entry: the module is gone
        ("recsys.evaluation.nowhere", "recsys.training.train"),
        ("recsys.evaluation.runner", "recsys.training.train"),  # real modules, but no such import
        ("recsys.training.train", "recsys.data.dataset"),  # downwards: allowed anyway
    }) == [
        "recsys.evaluation.nowhere: no such module",
        "recsys.training.run_config (imported by recsys.evaluation.runner): no such module",
        "recsys.evaluation.runner does not import recsys.training.train",
        "recsys.training.train -> recsys.data.dataset goes downwards or sideways: no exception needed",
    ]


def test_every_layer_names_a_real_module() -> None:
    assert [name for name in LAYERS if not module_exists(name)] == []


def all_imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_models_know_nothing_of_data_lightning_or_mlflow() -> None:
    for path in (PACKAGE / "models").rglob("*.py"):
        for module in all_imports_of(path):
            root = module.split(".")[0]
            assert root not in {"lightning", "mlflow", "polars"}, f"{path.name} imports {module}"
            assert not module.startswith("recsys.data"), f"{path.name} imports {module}"
