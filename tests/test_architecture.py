"""The import structure (docs/architecture.md): imports point down the layers and never in a circle.

Read from the source with ``ast`` (nothing is imported): every first-party module under src/, the
scripts and the top-level packages; an import inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train.py", "validate.py", "infer.py", "reproduce.py")
TOP_LEVEL_PACKAGES = ("coco_simulation", "bench")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _first_party_files() -> list[str]:
    files = [os.path.join(REPO, name) for name in SCRIPTS]
    for folder in ("src", *TOP_LEVEL_PACKAGES):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            files += [os.path.join(root, n) for n in names if n.endswith(".py")]
    return sorted(files)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(path: str) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of the file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    module, is_package = _module_name(path), path.endswith("__init__.py")
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(child, module, is_package)
                found.append((target, in_function))
                # "from src.data import partial_labels" imports the submodule too
                found.extend((f"{target}.{alias.name}", in_function) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    files = _first_party_files()
    modules = {_module_name(f) for f in files}
    graph = {}
    for path in files:
        targets = {name for name, _ in _imports(path)}
        graph[_module_name(path)] = {t for t in targets if t in modules and t != _module_name(path)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_import_walk_sees_a_planted_cycle():
    """The walker itself: a cycle a -> b -> a is found, a chain is not."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert "src.prior" in _graph()["src.trainer"]  # real edges are read


def test_no_import_cycle():
    assert _cycle(_graph()) is None


def test_src_never_imports_scripts_or_top_level_packages():
    upward = {os.path.splitext(s)[0] for s in SCRIPTS} | set(TOP_LEVEL_PACKAGES) | {"tests"}
    offenders = []
    for path in _first_party_files():
        if not _module_name(path).startswith("src"):
            continue
        for name, _ in _imports(path):
            if name.split(".")[0] in upward:
                offenders.append(f"{os.path.relpath(path, REPO)} imports {name}")
    assert offenders == []


def test_first_party_imports_sit_at_the_top_of_files():
    offenders = []
    for path in _first_party_files():
        for name, in_function in _imports(path):
            first_party = name.split(".")[0] in ("src", "coco_simulation", "train", "validate", "infer")
            if in_function and first_party:
                offenders.append(f"{os.path.relpath(path, REPO)}: {name}")
    assert offenders == []
