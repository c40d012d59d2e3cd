"""The layering of documentation/architecture.md, checked on the source (issue 28).

Every ``lmkreg/**/*.py`` is parsed with ``ast`` (nothing is imported), its imports resolved to
lmkreg modules, and:

(a) each package imports only the packages its row of ``MAY_IMPORT`` names;
(b) no circle between packages, and none between files;
(c) the imports running against the layering are exactly those of ``BACK_ARROWS`` (at most 2);
(d) at most ``MAX_LAZY`` imports sit inside functions, each with a ``# lazy:`` reason;
(e) every distribution of setup.py's install_requires is imported somewhere in lmkreg/.
"""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lmkreg"

# Level of each package (lmkreg.X is "X"; "lmkreg" is the root __init__): lower may never import higher.
LEVELS = {
    "lmkreg": 0, "errors": 0, "threads": 0, "parallel": 0, "paths": 0,
    "geometry": 1, "io": 1, "cli_utils": 1,
    "config": 2,
    "dataset": 3, "phantoms": 3, "preprocessing": 3,
    "trust": 4,
    "planning": 5, "training": 5,
    "inference": 6, "registration": 6,
    "evaluation": 7,
    "run": 8,
}
# Same-level arrows allowed, one direction each (the reverse is forbidden).
SAME_LEVEL = {("lmkreg", "threads"), ("paths", "errors"), ("io", "geometry"), ("phantoms", "dataset")}
# trust is a leaf of pure functions over plain data: it reads only these (besides numpy/scipy/SimpleITK).
TRUST_MAY_IMPORT = {"errors", "geometry", "io", "config"}


def _may_import(package: str) -> set[str]:
    if package == "trust":
        return TRUST_MAY_IMPORT | {"trust"}
    level = LEVELS[package]
    return ({p for p, lv in LEVELS.items() if lv < level} | {package}
            | {b for a, b in SAME_LEVEL if a == package})


MAY_IMPORT = {p: _may_import(p) for p in LEVELS}

# Imports running against the layering, each with its reason (issue 28: at most 2).
BACK_ARROWS: dict[tuple[str, str], str] = {}

MAX_LAZY = 40
LAZY_COMMENT = "# lazy:"

# setup.py install_requires distribution -> the module it installs
DISTRIBUTION_MODULES = {"numpy": "numpy", "scipy": "scipy", "SimpleITK": "SimpleITK", "nibabel": "nibabel",
                        "zlib-ng": "zlib_ng", "torch": "torch", "scikit-image": "skimage", "trimesh": "trimesh",
                        "matplotlib": "matplotlib", "tqdm": "tqdm", "batchgenerators": "batchgenerators",
                        "acvl-utils": "acvl_utils", "blosc2": "blosc2", "threadpoolctl": "threadpoolctl"}
# Declared but not imported yet, with why (empty: batchgenerators is imported by
# lmkreg/training/augmentation.py since issue 27's nnU-Net intensity transforms).
PENDING: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lmkreg"


class _Import:
    def __init__(self, source: str, targets: list[str], external: list[str], lineno: int, lazy: bool, text: str):
        self.source, self.targets, self.external = source, targets, external
        self.lineno, self.lazy, self.text = lineno, lazy, text


def _resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule if `name` is one, else the module."""
    return f"{module}.{name}" if f"{module}.{name}" in FILES else module


def _imports() -> list[_Import]:
    found = []
    for module, path in FILES.items():
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines()
        tree = ast.parse(src, str(path))
        in_function: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        in_function.add(id(inner))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets, external = [], []
            if isinstance(node, ast.Import):
                for a in node.names:
                    (targets if a.name.split(".")[0] == "lmkreg" else external).append(a.name)
            else:
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                if base.split(".")[0] == "lmkreg":
                    targets += [_resolve(base, a.name) for a in node.names]
                elif base != "__future__":
                    external.append(base)
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            found.append(_Import(module, targets, external, node.lineno, id(node) in in_function, text))
    return found


IMPORTS = _imports()


def _package_edges() -> dict[tuple[str, str], list[str]]:
    edges = defaultdict(list)
    for imp in IMPORTS:
        a = _package(imp.source)
        for t in imp.targets:
            b = _package(t)
            if a != b:
                edges[(a, b)].append(f"{FILES[imp.source].relative_to(REPO)}:{imp.lineno}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_level():
    assert {_package(m) for m in FILES} <= set(LEVELS), {_package(m) for m in FILES} - set(LEVELS)


def test_packages_import_only_what_the_table_allows():
    wrong = {e: where for e, where in _package_edges().items()
             if e[1] not in MAY_IMPORT[e[0]] and e not in BACK_ARROWS}
    assert not wrong, "imports against documentation/architecture.md's table:\n" + "\n".join(
        f"  {a} -> {b}: {where}" for (a, b), where in sorted(wrong.items()))


def test_back_arrows_are_few_and_still_needed():
    assert len(BACK_ARROWS) <= 2
    edges = _package_edges()
    for e, why in BACK_ARROWS.items():
        assert e in edges, f"{e} is listed as an allowed back arrow ({why}) but no longer exists: remove it"


def test_trust_is_a_leaf():
    for (a, b), where in _package_edges().items():
        if a == "trust":
            assert b in TRUST_MAY_IMPORT, (b, where)
    # and its third-party imports are computation only
    for imp in IMPORTS:
        if _package(imp.source) == "trust":
            assert all(e.split(".")[0] in {"numpy", "scipy", "SimpleITK", "math", "json", "itertools",
                                           "dataclasses", "pathlib", "typing", "sys", "warnings"}
                       for e in imp.external), imp.text


def test_no_circle_between_packages():
    assert _cycles(_package_edges()) == []


def test_no_circle_between_files():
    edges = set()
    for imp in IMPORTS:
        for t in imp.targets:
            if t != imp.source and t in FILES and not FILES[imp.source].name == "__init__.py":
                edges.add((imp.source, t))
    assert _cycles(edges) == []


def test_the_check_can_fail():
    """The circle finder finds a planted circle, and a lower package importing a higher is refused."""
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert "run" not in MAY_IMPORT["trust"] and "registration" not in MAY_IMPORT["trust"]
    assert "registration" not in MAY_IMPORT["inference"] and "inference" in MAY_IMPORT["evaluation"]


def test_imports_inside_functions_are_few_and_say_why():
    lazy = [imp for imp in IMPORTS if imp.lazy]
    listing = "\n".join(f"  {FILES[i.source].relative_to(REPO)}:{i.lineno}: {i.text.strip()}" for i in lazy)
    assert len(lazy) <= MAX_LAZY, f"{len(lazy)} imports inside functions (at most {MAX_LAZY}):\n{listing}"
    missing = [i for i in lazy if LAZY_COMMENT not in i.text]
    assert not missing, "imports inside functions without a '# lazy: reason' comment:\n" + "\n".join(
        f"  {FILES[i.source].relative_to(REPO)}:{i.lineno}: {i.text.strip()}" for i in missing)


def _install_requires() -> list[str]:
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    block = re.search(r"install_requires=\[(.*?)\]", setup, re.S).group(1)
    return [re.split(r"[<>=!~ \[]", s)[0] for s in re.findall(r'"([^"]+)"', block)]


def test_every_declared_dependency_is_imported():
    used = {e.split(".")[0] for imp in IMPORTS for e in imp.external}
    declared = _install_requires()
    unknown = [d for d in declared if d not in DISTRIBUTION_MODULES]
    assert not unknown, f"add the module name of {unknown} to DISTRIBUTION_MODULES"
    never = [d for d in declared if DISTRIBUTION_MODULES[d] not in used and d not in PENDING]
    assert not never, f"setup.py installs {never} but no file of lmkreg/ imports it"
    assert PENDING <= set(declared)
    for d in PENDING:  # a pending dependency that is imported by now must leave PENDING
        assert DISTRIBUTION_MODULES[d] not in used, f"{d} is imported now: remove it from PENDING"


@pytest.mark.parametrize("module", ["lmkreg.run", "lmkreg.trust", "lmkreg.geometry"])
def test_packages_exist(module):
    assert module in FILES
