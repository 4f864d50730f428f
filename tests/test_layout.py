"""The layers of DESIGN.md ("Layers: imports only go down"), read from the source with ``ast``:
a module imports only from its own package and from packages on lower layers, lazy imports
inside functions and ``TYPE_CHECKING`` blocks included; no circles between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tte2tee_fast"
# the folders installed inside the package (pyproject's package-dir)
SOURCES = {PACKAGE: ROOT / "tte2tee_fast", "kernels": ROOT / "kernels", "export": ROOT / "export"}

LAYERS = {
    "cli": 8,
    "commands": 8,
    "bench": 7,
    "evaluate": 6,
    "generate": 5,
    "export": 4,
    "adapt": 3,
    "training": 3,
    "models": 2,
    "kernels": 2,
    "diffusion": 1,
    "condition": 1,
    "data": 0,
    "errors": 0,
    "fsutil": 0,
    "packaged": 0,
    "__init__": 0,  # tte2tee_fast/__init__.py: the version
    "assets": 0,
}
# packages of one layer that may import each other in this direction only (DESIGN.md: adapt may
# use training, models may use kernels; the CLI group registers the commands; on layer 0 the
# one exception type, the atomic-write helper and the version are below everything)
SAME_LAYER = {
    ("adapt", "training"),
    ("models", "kernels"),
    ("cli", "commands"),
    *((low, base) for low in ("data", "fsutil", "packaged") for base in ("errors", "__init__")),
    ("data", "fsutil"),
}


def _modules() -> list[tuple[str, Path]]:
    """``(dotted module name, file)`` for every source file of the installed package."""
    found = []
    for top, folder in SOURCES.items():
        prefix = PACKAGE if top == PACKAGE else f"{PACKAGE}.{top}"
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__" and len(parts) > 1:
                parts = parts[:-1]
            elif parts == ["__init__"]:
                parts = [] if top != PACKAGE else ["__init__"]
            found.append((".".join([prefix, *parts]), path))
    return found


def package_of(module: str) -> str:
    """``tte2tee_fast.adapt.merge`` -> ``adapt``; ``tte2tee_fast.cli`` -> ``cli``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1].startswith("__"):  # the package itself (its __version__)
        return "__init__"
    return parts[1]


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """Every ``tte2tee_fast...`` module that ``path`` imports, with its line (relative imports
    resolved; ``from tte2tee_fast.x import y`` counts as importing ``tte2tee_fast.x.y``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    base = module.split(".") if _is_package(path) else module.split(".")[:-1]
    if module == f"{PACKAGE}.__init__":
        base = [PACKAGE]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                out.append((node.lineno, f"{target}.{alias.name}" if target == PACKAGE else target))
    return out


def violations() -> list[str]:
    bad = []
    for module, path in _modules():
        own = package_of(module)
        for line, target in imports_of(module, path):
            other = package_of(target)
            if other == own:
                continue
            if other not in LAYERS:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target} (unknown package)")
            elif LAYERS[other] > LAYERS[own] or (
                LAYERS[other] == LAYERS[own] and (own, other) not in SAME_LAYER
            ):
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {own} (layer {LAYERS[own]}) imports "
                    f"{target} ({other}, layer {LAYERS[other]})"
                )
    return bad


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        own = package_of(module)
        for _, target in imports_of(module, path):
            if package_of(target) != own:
                graph.setdefault(own, set()).add(package_of(target))
    return graph


def test_every_package_has_a_layer() -> None:
    packages = {package_of(m) for m, _ in _modules()}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))
    assert {"condition", "training", "bench", "export", "kernels"} <= packages


def test_imports_only_go_down() -> None:
    bad = violations()
    assert not bad, "imports that go up the layers of DESIGN.md:\n" + "\n".join(bad)


def test_no_circles_between_packages() -> None:
    graph = package_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_checker_catches_an_upward_lazy_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import inside a function from a higher layer is found."""
    src = tmp_path / "probe.py"
    src.write_text("def f():\n    from tte2tee_fast.adapt.merge import merge_adapter\n")
    found = imports_of("tte2tee_fast.models.probe", src)
    assert found == [(2, "tte2tee_fast.adapt.merge")]
    assert LAYERS[package_of(found[0][1])] > LAYERS["models"]
    rel = tmp_path / "rel.py"
    rel.write_text("from .ops import spade_norm_act\nfrom . import ops\n")
    assert imports_of("tte2tee_fast.kernels.rel", rel) == [
        (1, "tte2tee_fast.kernels.ops"),
        (2, "tte2tee_fast.kernels"),
    ]


def test_kernel_files_do_not_import_dispatch() -> None:
    """Each kernel file holds kernel, launcher, configs and reference; ``ops.py`` imports from
    them, never the other way round."""
    for name in ("lora_linear", "spade", "maskr2"):
        path = SOURCES["kernels"] / f"{name}.py"
        targets = [t for _, t in imports_of(f"{PACKAGE}.kernels.{name}", path)]
        assert not [t for t in targets if t.endswith((".ops", ".fused_lora"))], (name, targets)
