"""The rooms of docs/architecture.md, read from the imports: the runtime and the loader share only
the contract and its client, and nothing shared reaches into a room's `_internal`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What MLServer's side may import of the loader: the contract and its one client.
SHARED = {"loader", "loader.contract", "loader.signers", "loader.bundles", "loader.client", "loader.background", "loader.errors"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("runtime"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_runtime_imports_only_the_loaders_contract(path: Path) -> None:
    reached = {name for name in _imports(path) if name.split(".")[0] in ("loader", "authority", "tests")}
    outside = {name for name in reached if name not in SHARED and not name.startswith("loader.proto")}
    # `from loader.client import X` names X under the module: the module is what counts.
    outside = {name for name in outside if name.rsplit(".", 1)[0] not in SHARED}
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("name", sorted(SHARED - {"loader"}))
def test_the_shared_modules_keep_out_of_the_loaders_internals(name: str) -> None:
    path = ROOT / (name.replace(".", "/") + ".py")
    private = {found for found in _imports(path) if found.startswith(("loader._internal", "runtime"))}
    assert not private, f"{name} imports {sorted(private)}"


@pytest.mark.parametrize("path", _modules("loader"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_loader_never_imports_the_runtime(path: Path) -> None:
    reached = {name for name in _imports(path) if name.split(".")[0] in ("runtime", "authority", "tests")}
    assert not reached, f"{path.relative_to(ROOT)} imports {sorted(reached)}"
