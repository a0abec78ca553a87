"""Measure the package's house: its rooms (modules), import arrows, cycles, floors and wings.

Issue 25 asks for a layout a newcomer can carry on: no import cycle, no upward import between wings, the
Lightning wing the only one that imports ``lightning``, and a callback module that imports few others. This
tool reads the sources with :mod:`ast` (nothing is imported, so it runs without torch) and prints those
figures, before and after a move alike.

    python tools/house.py [--root PATH] [--json]

An arrow is a distinct module -> module edge between package modules. ``from lightning_synflow.x import y``
points at ``x.y`` when ``y`` is a submodule and at ``x`` otherwise; relative imports count; an import inside a
function is an arrow too, marked lazy (an arrow is lazy when every import behind it is). Cycles are the
strongly connected components of more than one module, and modules importing themselves. Floors are the
longest-path levels of the graph of those components (a module importing no other is on floor 1).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGE = "lightning_synflow"
FACADE = PACKAGE  # the package's own __init__: what users import, above every wing
FOUNDATIONS = {"validation", "schedules", "distributions", "parameters", "model_state", "_moved"}
#: The declared wing order, lowest first: a wing may import only the wings before it.
WING_ORDER = ("root:foundations", "selection", "distributed", "scorers", "root:core", "models", "analysis", "lightning")
CALLBACK_PATHS = ("lightning/callback.py", "callback.py")


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def wing_of(module: str, is_package: bool) -> str:
    """The first folder under the package; root modules are ``root:foundations`` or ``root:core``."""
    parts = module.split(".")[1:]
    if not parts:
        return "facade"
    if len(parts) > 1 or is_package:
        return parts[0]
    return "root:foundations" if parts[0] in FOUNDATIONS else "root:core"


class _Imports(ast.NodeVisitor):
    """Collects ``(target names, lazy, line)`` for every import, and whether ``lightning`` is imported."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[list[str], bool, int]] = []
        self.imports_lightning = False
        self._depth = 0

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._note_lightning(alias.name)
            self.found.append(([alias.name], self._depth > 0, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
            self._note_lightning(source)
        # Each imported name may be a submodule; resolution against the module list decides.
        self.found.append(([f"{source}.{a.name}" for a in node.names] + [source], self._depth > 0, node.lineno))

    def _note_lightning(self, name: str) -> None:
        if name == "lightning" or name.startswith("lightning."):
            self.imports_lightning = True


def measure(root: Path) -> dict:
    package_dir = root / PACKAGE
    if not package_dir.is_dir():
        raise SystemExit(f"--root must hold {PACKAGE}/, got {root}")
    files = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p, package_dir): p for p in files}
    is_package = {m: p.name == "__init__.py" for m, p in modules.items()}

    parse_errors: dict[str, str] = {}
    edges: dict[tuple[str, str], bool] = {}  # (source, target) -> lazy
    lightning_importers = []
    for module, path in modules.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as error:
            parse_errors[module] = f"{error.msg} (line {error.lineno})"
            continue
        visitor = _Imports(module, is_package[module])
        visitor.visit(tree)
        if visitor.imports_lightning:
            lightning_importers.append(module)
        for candidates, lazy, _ in visitor.found:
            targets = _resolve(candidates, modules)
            for target in targets:
                key = (module, target)
                edges[key] = edges.get(key, True) and lazy

    graph = {m: sorted(t for (s, t) in edges if s == m) for m in modules}
    components = _strongly_connected(graph)
    cycles = [sorted(c) for c in components if len(c) > 1 or (c[0], c[0]) in edges]
    floors = _floors(graph, components)

    callback = next((f"{PACKAGE}.{p[:-3].replace('/', '.')}" for p in CALLBACK_PATHS if (package_dir / p).exists()), None)
    callback_imports = sorted(graph.get(callback, [])) if callback else []

    wings = {m: wing_of(m, is_package[m]) for m in modules}
    wing_edges: dict[tuple[str, str], list[str]] = {}
    facade_imports, imports_of_facade = [], []
    for (source, target), lazy in sorted(edges.items()):
        if wings[source] == "facade":
            facade_imports.append(target)
            continue
        if wings[target] == "facade":
            imports_of_facade.append(source)
            continue
        if wings[source] != wings[target]:
            wing_edges.setdefault((wings[source], wings[target]), []).append(
                f"{_short(source)} -> {_short(target)}" + (" (lazy)" if lazy else "")
            )
    rank = {w: i for i, w in enumerate(WING_ORDER)}
    upward = {
        f"{a} -> {b}": arrows
        for (a, b), arrows in wing_edges.items()
        if a in rank and b in rank and rank[b] > rank[a]
    }
    wing_graph = {w: sorted({b for (a, b) in wing_edges if a == w}) for w in set(wings.values()) - {"facade"}}
    wing_cycles = [sorted(c) for c in _strongly_connected(wing_graph) if len(c) > 1]

    return {
        "root": str(root),
        "rooms": len(modules),
        "parse_errors": parse_errors,
        "arrows": len(edges),
        "lazy_arrows": sorted(f"{_short(s)} -> {_short(t)}" for (s, t), lazy in edges.items() if lazy),
        "cycles": [[_short(m) for m in c] for c in cycles],
        "floors": floors,
        "lightning_importers": sorted(_short(m) for m in lightning_importers),
        "callback": _short(callback) if callback else None,
        "callback_imports": [_short(m) for m in callback_imports],
        "wings": {w: sorted(_short(m) for m in modules if wings[m] == w) for w in sorted(set(wings.values()))},
        "unranked_wings": sorted(set(wings.values()) - set(WING_ORDER) - {"facade"}),
        "wing_arrows": {f"{a} -> {b}": arrows for (a, b), arrows in sorted(wing_edges.items())},
        "wing_cycles": wing_cycles,
        "upward_arrows": upward,
        "facade_imports": sorted(_short(m) for m in facade_imports),
        "modules_importing_facade": sorted(_short(m) for m in imports_of_facade),
    }


def _resolve(candidates: list[str], modules: dict) -> set[str]:
    """Package modules an import points at: the named submodules, else the deepest existing prefix."""
    named = {c for c in candidates[:-1] if c in modules}
    if len(candidates) > 1 and named:
        # ``from x import a, b`` where only some are submodules: the others are attributes of x.
        rest = [c for c in candidates[:-1] if c not in modules]
        return named | (_deepest(candidates[-1], modules) if rest else set())
    name = candidates[-1]
    return _deepest(name, modules)


def _deepest(name: str, modules: dict) -> set[str]:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return {prefix}
    return set()


def _short(module: str) -> str:
    return module[len(PACKAGE) + 1 :] if module != PACKAGE else "__init__"


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep import chains must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph.get(start, [])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _floors(graph: dict[str, list[str]], components: list[list[str]]) -> int:
    """Longest-path levels of the component DAG (Tarjan emits a component after all it imports)."""
    of = {m: i for i, c in enumerate(components) for m in c}
    level: dict[int, int] = {}
    for i, component in enumerate(components):
        below = [level[of[t]] for m in component for t in graph[m] if of[t] != i]
        level[i] = 1 + max(below, default=0)
    return max(level.values(), default=0)


def render(house: dict) -> str:
    lines = [f"house of {PACKAGE} at {house['root']}"]
    lines.append(f"rooms (modules): {house['rooms']}")
    for module, error in house["parse_errors"].items():
        lines.append(f"  does not parse: {module}: {error}")
    lines.append(f"import arrows: {house['arrows']} ({len(house['lazy_arrows'])} lazy)")
    lines += [f"  lazy: {a}" for a in house["lazy_arrows"]]
    lines.append(f"import cycles: {len(house['cycles'])}")
    lines += [f"  cycle: {' <-> '.join(c)}" for c in house["cycles"]]
    lines.append(f"floors: {house['floors']}")
    lines.append(f"modules importing lightning: {len(house['lightning_importers'])}: {', '.join(house['lightning_importers'])}")
    if house["callback"]:
        lines.append(
            f"{house['callback']} imports {len(house['callback_imports'])} package modules: "
            + ", ".join(house["callback_imports"])
        )
    lines.append(f"wings (declared order, lowest first: {', '.join(WING_ORDER)}):")
    for wing, members in house["wings"].items():
        lines.append(f"  {wing} ({len(members)}): {', '.join(members)}")
    if house["unranked_wings"]:
        lines.append(f"  not in the declared order: {', '.join(house['unranked_wings'])}")
    lines.append(f"façade (__init__) imports: {', '.join(house['facade_imports'])}")
    lines.append(f"modules importing the façade: {', '.join(house['modules_importing_facade']) or 'none'}")
    lines.append(f"wing arrows: {len(house['wing_arrows'])}")
    for pair, arrows in house["wing_arrows"].items():
        mark = "  UPWARD" if pair in house["upward_arrows"] else ""
        lines.append(f"  {pair} ({len(arrows)}){mark}")
    lines.append(f"wing cycles: {len(house['wing_cycles'])}")
    lines += [f"  cycle: {' <-> '.join(c)}" for c in house["wing_cycles"]]
    lines.append(f"upward wing arrows: {len(house['upward_arrows'])}")
    for pair, arrows in house["upward_arrows"].items():
        lines.append(f"  {pair}: {'; '.join(arrows)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON dict")
    args = parser.parse_args(argv)
    house = measure(args.root.resolve())
    print(json.dumps(house, indent=2) if args.json else render(house))
    return 0


if __name__ == "__main__":
    sys.exit(main())
