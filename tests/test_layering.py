"""Imports flow one way: errors/config -> data -> models -> saved_model -> training, evaluation ->
retrieval -> serving -> cli. A module may import its own layer or a lower one, never a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "recsys"
LAYERS = {
    "recsys": 0, "recsys.errors": 0, "recsys.config": 0, "recsys.cpus": 0, "recsys.durable": 0,
    "recsys.data": 1,
    "recsys.models": 2,
    "recsys.saved_model": 3, "recsys.run_config": 3,
    "recsys.evaluation": 4, "recsys.training": 4,
    "recsys.retrieval": 5,
    "recsys.serving": 6,
    "recsys.cli": 7,
}
# Deliberate exceptions, each with its reason.
ALLOWED = {
    # `recsys evaluate` rebuilds a saved model's run config and model through the training registry.
    ("recsys.evaluation.runner", "recsys.training.run_config"),
    ("recsys.evaluation.runner", "recsys.training.train"),
}


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
