"""The package's rooms import one way: entry points, then the estimators, then the engines
and layers, then backbones and the store, then the input pipeline and weights."""

import ast
from pathlib import Path

import pytest

import sktransfer

PACKAGE = Path(sktransfer.__file__).parent

# A room imports only rooms of higher rank, and itself; entry points (rank 0) import each other.
RANKS = {
    "sktransfer": 0,
    "demo": 0,
    "datasets": 0,
    "inspection": 0,
    "_featurizer": 1,
    "_finetune": 1,
    "_layers": 2,
    "_engines": 2,
    "_backbones": 3,
    "_store": 3,
    "_input": 4,
    "_weights": 4,
    "_versions": 4,
}


def _room(module):
    """The room of a dotted module name inside the package ('sktransfer' for the top)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sktransfer"


def _imports(path):
    """Every sktransfer module that ``path`` imports, at any depth of the file."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    module = module.removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from sktransfer import _store` imports a room; `import PretrainedFeaturizer`, the top
            rooms = [alias.name for alias in node.names if alias.name in RANKS]
            targets = [f"{target}.{room}" for room in rooms] if target == "sktransfer" else []
            targets = targets or [target]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "sktransfer":
                yield module, target


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_rank():
    modules = (".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in MODULES)
    rooms = {_room(module.removesuffix(".__init__")) for module in modules}
    assert rooms <= set(RANKS), rooms - set(RANKS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    for module, target in _imports(path):
        source, imported = _room(module), _room(target)
        if source != imported and RANKS[source] + RANKS[imported] > 0:
            assert RANKS[source] < RANKS[imported], f"{module} imports {target}, which is above it"
