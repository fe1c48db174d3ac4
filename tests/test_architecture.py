"""The import structure: imports point down the floors of docs/architecture.md's layer table, never up
and never in a circle.

Read from the source with ``ast`` (nothing is imported): every first-party module under src/, the
scripts and the top-level packages; an import inside a function counts like one at the top. The floors
come from the table ``| floor | modules |`` of docs/architecture.md (first row the highest floor): each
cell lists paths (a file, a package folder ending in ``/``, or ``**/__main__.py`` for every command
module); a module's floor is that of its most specific path. A module may import its own floor or a lower
one.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHITECTURE = os.path.join(REPO, "docs", "architecture.md")
MAIN_PATTERN = "**/__main__.py"


def _module_name(path: str, root: str = REPO) -> str:
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def read_layer_table(text: str) -> list[tuple[str, list[str]]]:
    """[(floor, [path, ...])] from the markdown table headed ``| floor | modules |``, top floor first."""
    lines = text.splitlines()
    heading = re.compile(r"\|\s*floor\s*\|\s*modules\s*\|")
    header = next((i for i, line in enumerate(lines) if heading.fullmatch(line.strip())), None)
    assert header is not None, f"{ARCHITECTURE}: no '| floor | modules |' table"
    floors = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        floor, modules = (cell.strip() for cell in line.strip().strip("|").split("|"))
        floors.append((floor, re.findall(r"`([^`]+)`", modules)))
    return floors


def floor_of(rel_path: str, floors: list[tuple[str, list[str]]]) -> str | None:
    """The floor of the file ``rel_path`` (relative, '/'-separated): that of the longest listed path
    covering it; every ``__main__.py`` sits on the floor listing ``**/__main__.py``."""
    best, best_length = None, -1
    for floor, paths in floors:
        for path in paths:
            if path == MAIN_PATTERN:
                if rel_path.endswith("__main__.py"):
                    return floor
                continue
            covers = rel_path == path or (path.endswith("/") and rel_path.startswith(path))
            if covers and len(path) > best_length:
                best, best_length = floor, len(path)
    return best


def _first_party_files(floors, root: str = REPO) -> list[str]:
    """Every .py file of src/ and of the paths the table lists (scripts, top-level packages)."""
    tops = {path.split("/")[0] for _, paths in floors for path in paths if path != MAIN_PATTERN} | {"src"}
    files = []
    for top in sorted(tops):
        full = os.path.join(root, top)
        if os.path.isfile(full):
            files.append(full)
        for folder, _, names in os.walk(full):
            files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return sorted(files)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(path: str, root: str = REPO) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of the file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    module, is_package = _module_name(path, root), path.endswith("__init__.py")
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


def _graph(files: list[str], root: str = REPO) -> dict[str, set[str]]:
    modules = {_module_name(f, root) for f in files}
    graph = {}
    for path in files:
        module = _module_name(path, root)
        graph[module] = {name for name, _ in _imports(path, root) if name in modules and name != module}
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


def layer_violations(root: str, floors: list[tuple[str, list[str]]]) -> list[str]:
    """What breaks the table under ``root``: a module on no floor, a listed path that does not exist or is
    listed twice, an import from a lower floor up to a higher one."""
    problems = []
    listed = [path for _, paths in floors for path in paths]
    twice = sorted({path for path in listed if listed.count(path) > 1})
    problems += [f"{path} is listed on two floors" for path in twice]
    problems += [f"{path} is listed but does not exist" for path in listed
                 if path != MAIN_PATTERN and not os.path.exists(os.path.join(root, path))]
    height = {floor: len(floors) - i for i, (floor, _) in enumerate(floors)}
    files = _first_party_files(floors, root)
    rel = {_module_name(f, root): os.path.relpath(f, root).replace(os.sep, "/") for f in files}
    floor = {module: floor_of(path, floors) for module, path in rel.items()}
    problems += [f"{rel[m]} sits on no floor of the table" for m in sorted(floor) if floor[m] is None]
    for module, targets in sorted(_graph(files, root).items()):
        for target in sorted(targets):
            if floor[module] and floor[target] and height[floor[target]] > height[floor[module]]:
                problems.append(f"{rel[module]} ({floor[module]}) imports {target} ({floor[target]}), a "
                                f"higher floor")
    return problems


def _table() -> list[tuple[str, list[str]]]:
    with open(ARCHITECTURE, encoding="utf-8") as handle:
        return read_layer_table(handle.read())


def _plant(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return str(root)


TOY_TABLE = """
| floor | modules |
|---|---|
| scripts | `run.py` `**/__main__.py` |
| engine | `src/engine.py` |
| domain | `src/data/` `src/__init__.py` |
"""


def test_the_import_walk_sees_a_planted_cycle():
    """The walker itself: a cycle a -> b -> a is found, a chain is not."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert "src.utils.distributed" in _graph(_first_party_files(_table()))["src.engine"]  # real edges


def test_the_layer_check_fails_on_a_planted_upward_import(tmp_path):
    floors = read_layer_table(TOY_TABLE)
    assert [floor for floor, _ in floors] == ["scripts", "engine", "domain"]
    tree = {"run.py": "import src.engine\n", "src/__init__.py": "",
            "src/engine.py": "from src.data import x\n",
            "src/data/__init__.py": "", "src/data/x.py": "from . import y\n", "src/data/y.py": "",
            "src/data/__main__.py": "import run\n"}  # a command module is a script: it may import one
    root = _plant(tmp_path, tree)
    assert layer_violations(root, floors) == []  # down and sideways only
    _plant(tmp_path, {"src/data/y.py": "def f():\n    from src.engine import g\n"})  # domain -> engine
    assert layer_violations(root, floors) == [
        "src/data/y.py (domain) imports src.engine (engine), a higher floor"]
    _plant(tmp_path, {"src/data/y.py": "", "src/extra.py": ""})
    assert layer_violations(root, floors) == ["src/extra.py sits on no floor of the table"]
    stale = read_layer_table(TOY_TABLE.replace("`src/engine.py`", "`src/engine.py` `src/gone.py` `run.py`"))
    os.remove(os.path.join(root, "src", "extra.py"))
    assert layer_violations(root, stale) == ["run.py is listed on two floors",
                                             "src/gone.py is listed but does not exist"]


def test_imports_follow_the_layer_table():
    """docs/architecture.md's table covers every module, and no import runs up a floor."""
    floors = _table()
    assert [floor for floor, _ in floors] == ["scripts", "run", "engine", "domain", "utils"]
    assert layer_violations(REPO, floors) == []


def test_no_import_cycle():
    assert _cycle(_graph(_first_party_files(_table()))) is None


def test_src_never_imports_scripts_or_top_level_packages():
    scripts = dict(_table())["scripts"]
    upward = {path.split("/")[0].removesuffix(".py") for path in scripts if path != MAIN_PATTERN} | {"tests"}
    offenders = []
    for path in _first_party_files(_table()):
        if not _module_name(path).startswith("src"):
            continue
        for name, _ in _imports(path):
            if name.split(".")[0] in upward:
                offenders.append(f"{os.path.relpath(path, REPO)} imports {name}")
    assert offenders == []


def test_first_party_imports_sit_at_the_top_of_files():
    offenders = []
    for path in _first_party_files(_table()):
        for name, in_function in _imports(path):
            first_party = name.split(".")[0] in ("src", "coco_simulation", "train", "validate", "infer")
            if in_function and first_party:
                offenders.append(f"{os.path.relpath(path, REPO)}: {name}")
    assert offenders == []


def _loaded_by(module: str) -> list[str]:
    code = f"import sys\nimport {module}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module, leaf", [("src.prior", "src.prior.accumulator"),
                                          ("src.loss_functions", "src.loss_functions.partial_selective")])
def test_the_loss_and_the_prior_load_no_engine_model_metric_or_dataset(module, leaf):
    """The loss and the prior stand on torch (and the prior's file, for the loss): lifting them into other
    code loads no engine, model, metric, dataset or timm. The clean pass sits in the engine."""
    heavy = ("src.engine", "src.models", "src.metrics", "src.data", "timm")
    loaded = _loaded_by(module)
    assert [m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy)] == []
    assert leaf in loaded  # the check sees what was imported


def test_every_module_is_named_in_the_architecture_doc():
    """docs/architecture.md's "Every module" table names each module of src/ (a file, or a file beside a
    named one in the same folder: `src/data/coco.py`, `openimages.py`), and nothing that is gone."""
    repo = pathlib.Path(REPO)
    text = (repo / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Every module", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in section.splitlines()[2:]:
        folder = ""
        for name in re.findall(r"`([\w/.]+\.py)`", row.split("|")[1]):
            if "/" in name:
                folder = os.path.dirname(name)
            named.add(name if "/" in name or not folder else f"{folder}/{name}")
    modules = {str(path.relative_to(repo)) for path in (repo / "src").rglob("*.py")
               if path.name != "__init__.py"}
    assert modules - named == set(), "add these to docs/architecture.md's module table"
    missing = {name for name in named if not (repo / name).is_file()}
    assert missing == set(), "docs/architecture.md names modules that do not exist"
