"""The package's shape: its import graph has no cycles, no module imports a
module of a higher layer, and the plain command line leaves the optional
extras (CuPy, Dask, scikit-learn, ONNX) alone.

The graph is read from the source with :mod:`ast` (the Cython sources with
a line pattern): imports at module level and inside functions, absolute and
relative, ``from . import x`` counted as an import of the submodule ``x``
when there is one and of the package otherwise.  Imports under ``if
TYPE_CHECKING:`` never run and are left out.  Importing ``a.b.c`` counts as
an edge to ``a.b.c`` only: that Python runs ``a/__init__`` first is not a
dependency of the importer (but it is followed when working out what an
import loads eagerly, see :func:`eager_closure`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from collections import deque
from dataclasses import dataclass

import pytest

PACKAGE = "fmcli"
# The package's sources where it is installed (a checkout, or a wheel: the
# Cython sources ship with it), and the folder they are named from.
PACKAGE_DIR = os.path.dirname(os.path.abspath(importlib.util.find_spec(PACKAGE).origin))
ROOT = os.path.dirname(PACKAGE_DIR)

# ---------------------------------------------------------------------------
# The layers, lowest first.  A module may import modules of its own layer or
# of a lower one, never of a higher one.  An entry is a module's dotted name,
# or a package's name followed by ".*" for the package and everything in it.
# A new module has to be placed here (test_every_module_has_a_layer says so).
# ---------------------------------------------------------------------------

LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    # 0 foundation: leaf helpers and definitions that import nothing of
    # fmcli but each other, usable from anywhere: the version, the errors and
    # exit codes, safe paths and atomic writes, float text, and the model
    # registry (what each model kind and optimizer is).
    (0, "foundation", (
        "fmcli._version", "fmcli.errors", "fmcli.safepaths", "fmcli.atomic", "fmcli.numtext",
        "fmcli.registry",
    )),
    # 1 data and compiled core: the Cython parsers and kernels (they import
    # no Python module of fmcli), the readers and writers of data, the
    # metrics, and the configuration (which builds the readers' limits and
    # checks metric names; the data cache reads it back).
    (1, "data, compiled core, config, metrics", (
        "fmcli._core.*", "fmcli.data.*", "fmcli.config", "fmcli.metrics",
    )),
    # 2 models: the model object, its file format, checkpoints, libffm's
    # model files, the input maps that say how a model's rows are read, the
    # host training layout of a model's parameters (which runs no kernel),
    # and the C scorer's inference files.
    (2, "models and model files", (
        "fmcli.model", "fmcli.modelfile", "fmcli.checkpoint", "fmcli.libffm", "fmcli.inputmap",
        "fmcli.params", "fmcli.inference",
    )),
    # 3 backends: where parameters live and are trained: the backend
    # interface with its factory, the CPU backend (the compiled kernels on
    # the host layout), the GPU backend (imported only for --device cuda
    # or auto) and the Dask backend (only for --scheduler).
    (3, "backends", (
        "fmcli.backend", "fmcli.cpu", "fmcli.gpu.*", "fmcli.distributed",
    )),
    # 4 orchestration: runs of training, scoring, inspecting and converting,
    # the run log they write, and the ONNX export of a model (imported only
    # for fm convert --to onnx), and the HTTP scoring server of fm serve.
    (4, "orchestration", (
        "fmcli.train", "fmcli.predict", "fmcli.inspect", "fmcli.convert", "fmcli.runlog",
        "fmcli.tune", "fmcli.distributed_predict", "fmcli.onnx_export",
        "fmcli.serve",
    )),
    # 5 front ends: the public API of ``import fmcli``, ``python -m fmcli``,
    # the click commands, and the settings read from TOML files and FM_*
    # variables for them (settings imports click: it belongs to the CLI).
    (5, "front ends", (
        "fmcli", "fmcli.__main__", "fmcli.cli.*", "fmcli.settings",
        "fmcli.transformers",
        "fmcli.estimators",
    )),
)

FRONT_END = max(layer for layer, _, _ in LAYERS)

# Installed only with an extra (or not a dependency at all): the plain
# command line must not import them, nor try to.
OPTIONAL_EXTRAS = ("cupy", "cupyx", "dask", "distributed", "sklearn", "onnx", "onnxruntime")

# Only front ends may import these (DESIGN: the core never imports the CLI,
# rich or click).
FRONT_END_ONLY = ("click", "rich")


# ---------------------------------------------------------------------------
# reading the graph
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    """One import statement's effect: `source` imports `target`."""

    source: str           # importing module
    target: str           # imported name, fully qualified (fmcli.x or an outside package)
    line: int
    eager: bool           # runs when `source` is imported (not inside a function)


def discover(package_dir: str = PACKAGE_DIR, package: str = PACKAGE) -> dict[str, str]:
    """Every module of the package: dotted name -> source path (.py, or .pyx
    for the compiled ones).  A package is named by its directory."""
    modules = {}
    base = os.path.dirname(package_dir)
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith((".py", ".pyx")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), base)
            dotted = rel.rsplit(".", 1)[0].replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            modules.setdefault(dotted, os.path.join(dirpath, name))
    assert package in modules, f"{package_dir} is not a package"
    return modules


def _is_package(path: str) -> bool:
    return os.path.basename(path).startswith("__init__.")


def resolve(source: str, is_package: bool, level: int, module: str | None, names: list[str],
            modules) -> list[str]:
    """What ``from <level dots><module> import <names>`` in `source` imports:
    ``base.name`` for each name that is a module, else ``base`` itself."""
    if level:
        parts = source.split(".") if is_package else source.split(".")[:-1]
        if level - 1 > len(parts) - 1:
            raise ValueError(f"{source}: relative import beyond the top-level package")
        parts = parts[: len(parts) - (level - 1)]
        base = ".".join(parts + ([module] if module else []))
    else:
        base = module or ""
    targets = []
    for name in names:
        sub = f"{base}.{name}"
        targets.append(sub if name != "*" and sub in modules else base)
    return targets


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def python_imports(source: str, is_package: bool, text: str, modules) -> list[Import]:
    """The imports of one Python module, at any depth."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for other in child.orelse:   # the else branch does run
                    visit(ast.Module(body=[other], type_ignores=[]), in_function)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(source, alias.name, child.lineno, not in_function))
            elif isinstance(child, ast.ImportFrom):
                names = [alias.name for alias in child.names]
                for target in resolve(source, is_package, child.level, child.module, names, modules):
                    found.append(Import(source, target, child.lineno, not in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                           ast.Lambda)))

    visit(ast.parse(text), False)
    return found


_CY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_CY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.M)


def cython_imports(source: str, is_package: bool, text: str, modules) -> list[Import]:
    """The Python imports of a Cython module (``cimport`` is compile time and
    left out; ``cimport`` never matches the patterns).  Cython sources are
    read by pattern: every import counts as eager."""
    text = re.sub(r"#[^\n]*", "", text)
    found = []
    for m in _CY_FROM.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        names = [n.split(" as ")[0].strip() for n in m.group(3).strip("()").split(",")]
        for target in resolve(source, is_package, len(m.group(1)), m.group(2) or None,
                              [n for n in names if n], modules):
            found.append(Import(source, target, line, True))
    for m in _CY_IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for name in m.group(1).split(","):
            found.append(Import(source, name.split(" as ")[0].strip(), line, True))
    return found


def read_imports(modules: dict[str, str]) -> list[Import]:
    """Every import of every module (outside packages included)."""
    found = []
    for name, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        reader = cython_imports if path.endswith(".pyx") else python_imports
        found += reader(name, _is_package(path), text, modules)
    return found


def internal(imports: list[Import], modules) -> list[Import]:
    """The imports between the package's own modules, each import of a
    name that is not a module (``import fmcli.x.y`` of a missing y) counted
    as one of its nearest existing package, self-imports left out."""
    out = []
    for imp in imports:
        target = imp.target
        if target.split(".")[0] != PACKAGE:
            continue
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        if target != imp.source:
            out.append(Import(imp.source, target, imp.line, imp.eager))
    return out


def graph(edges: list[Import]) -> dict[str, dict[str, Import]]:
    """source -> target -> the first import statement making that edge."""
    g: dict[str, dict[str, Import]] = {}
    for e in sorted(edges, key=lambda e: (e.source, e.target, e.line)):
        g.setdefault(e.source, {}).setdefault(e.target, e)
    return g


# ---------------------------------------------------------------------------
# cycles
# ---------------------------------------------------------------------------

def strongly_connected(nodes, g) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(g.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, {})))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
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
                components.append(sorted(component))
    return components


def shortest_cycle(start: str, members: set[str], g) -> list[str]:
    """The shortest path start -> ... -> start inside one component."""
    parent = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(g.get(node, {})):
            if child not in members:
                continue
            if child == start:            # back at the start: walk the parents home
                path = []
                while node is not None:
                    path.append(node)
                    node = parent[node]
                return path[::-1] + [start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")


def cycles(g) -> list[list[str]]:
    """One shortest cycle through each module that is on a cycle, each
    cycle listed once (starting from its smallest name)."""
    nodes = set(g) | {t for targets in g.values() for t in targets}
    found = []
    seen = set()
    for component in strongly_connected(nodes, g):
        if len(component) < 2:
            continue
        members = set(component)
        for start in component:
            chain = shortest_cycle(start, members, g)
            ring = chain[:-1]
            i = ring.index(min(ring))
            ring = ring[i:] + ring[:i]
            if tuple(ring) not in seen:
                seen.add(tuple(ring))
                found.append(ring + [ring[0]])
    return found


def describe_cycle(chain: list[str], g, modules) -> str:
    """``a -> b -> a`` and where each step is imported."""
    steps = []
    for a, b in zip(chain, chain[1:]):
        imp = g[a][b]
        where = os.path.relpath(modules[a], ROOT) if a in modules else a
        steps.append(f"{where}:{imp.line}{'' if imp.eager else ' (in a function)'}")
    return " -> ".join(chain) + "   [" + ", ".join(steps) + "]"


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------

def layer_of(module: str, layers=LAYERS) -> int | None:
    """The layer of the most specific entry naming `module`."""
    best, best_len = None, -1
    for layer, _, entries in layers:
        for entry in entries:
            if entry.endswith(".*"):
                prefix = entry[:-2]
                hit = module == prefix or module.startswith(prefix + ".")
                length = len(prefix)
            else:
                hit = module == entry
                length = len(entry) + 1   # an exact entry beats a prefix of the same name
            if hit and length > best_len:
                best, best_len = layer, length
    return best


def upward_imports(edges: list[Import], layers=LAYERS) -> list[str]:
    """Every import of a module of a higher layer, as a readable line."""
    names = {layer: title for layer, title, _ in layers}
    bad = []
    for e in edges:
        a, b = layer_of(e.source, layers), layer_of(e.target, layers)
        if a is not None and b is not None and b > a:
            bad.append(f"{e.source} (layer {a}, {names[a]}) imports {e.target} (layer {b}, {names[b]}) "
                       f"at line {e.line}{'' if e.eager else ' (in a function)'}")
    return bad


def eager_closure(start: str, imports: list[Import], modules) -> set[str]:
    """The package modules that ``import start`` loads: module-level imports,
    followed transitively, with the packages Python runs first."""
    by_source: dict[str, set[str]] = {}
    for e in internal(imports, modules):
        if e.eager:
            by_source.setdefault(e.source, set()).add(e.target)
    loaded: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):    # fmcli, fmcli.cli, fmcli.cli.x
            prefix = ".".join(parts[:i])
            if prefix in modules and prefix not in loaded:
                loaded.add(prefix)
                todo.extend(by_source.get(prefix, ()))
    return loaded


# ---------------------------------------------------------------------------
# the package as it is
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def package():
    modules = discover()
    imports = read_imports(modules)
    edges = internal(imports, modules)
    return modules, imports, edges, graph(edges)


def test_the_graph_reads_what_the_code_imports(package):
    """The reader sees the imports these tests depend on (a guard against a
    reader that quietly finds nothing)."""
    modules, imports, edges, g = package
    assert {"fmcli", "fmcli.cli", "fmcli.cli.train", "fmcli.data.text", "fmcli._core._kernels",
            "fmcli.gpu.state", "fmcli.__main__"} <= set(modules)
    assert "fmcli.cli.train" in g["fmcli.cli"]            # from . import train as _train
    assert "fmcli.cli" in g["fmcli.__main__"]             # from .cli import main
    assert "fmcli._core._parse" in g["fmcli.data.text"]   # from .._core._parse import ...
    assert "fmcli._core._kernels" in g["fmcli._core"]     # a Cython package's __init__
    assert "fmcli.libffm" in g["fmcli.convert"]           # from . import libffm (in a function)
    assert not g["fmcli.convert"]["fmcli.libffm"].eager
    assert any(i.source == "fmcli.cli._render" and i.target.startswith("rich") for i in imports)
    assert len(edges) > 100


def test_no_import_cycles(package):
    modules, _, _, g = package
    found = [describe_cycle(c, g, modules) for c in cycles(g)]
    assert not found, ("import cycles (each chain returns to its start; the brackets say "
                       "where each step is imported):\n  " + "\n  ".join(found))


def test_every_module_has_a_layer(package):
    modules = package[0]
    missing = sorted(m for m in modules if layer_of(m) is None)
    assert not missing, ("place these modules in a layer of LAYERS in tests/test_layers.py: "
                         + ", ".join(missing))


def test_every_layer_entry_names_a_module(package):
    """A stale entry (a module renamed or removed) would hide a new one."""
    modules = package[0]
    stale = []
    for _, _, entries in LAYERS:
        for entry in entries:
            name = entry[:-2] if entry.endswith(".*") else entry
            if name not in modules:
                stale.append(entry)
    assert not stale, "LAYERS names modules that do not exist: " + ", ".join(stale)


def test_no_module_imports_a_higher_layer(package):
    bad = upward_imports(package[2])
    assert not bad, "imports of a higher layer (see LAYERS in tests/test_layers.py):\n  " + "\n  ".join(bad)


def test_below_the_front_ends_nothing_imports_click_or_rich(package):
    modules, imports, _, _ = package
    bad = [f"{i.source} imports {i.target} at line {i.line}" for i in imports
           if i.target.split(".")[0] in FRONT_END_ONLY and layer_of(i.source) is not None
           and layer_of(i.source) < FRONT_END]
    assert not bad, "the core imports the CLI's libraries:\n  " + "\n  ".join(bad)


def test_the_cli_does_not_load_optional_extras_when_imported(package):
    """Statically: no module that ``import fmcli.cli`` (or the ffm-train /
    ffm-predict entry points) loads imports an extra at module level."""
    modules, imports, _, _ = package
    loaded = eager_closure("fmcli.cli", imports, modules) | \
        eager_closure("fmcli.cli.libffm_compat", imports, modules)
    assert {"fmcli", "fmcli.cli", "fmcli.cli.train", "fmcli.errors"} <= loaded
    bad = [f"{i.source} imports {i.target} at line {i.line}" for i in imports
           if i.source in loaded and i.eager and i.target.split(".")[0] in OPTIONAL_EXTRAS]
    assert not bad, "the plain CLI imports optional extras when it starts:\n  " + "\n  ".join(bad)


_WATCH = """
import importlib.abc, json, os, sys
EXTRAS = {extras!r}
tried = set()

class Watch(importlib.abc.MetaPathFinder):
    # Records every attempt to import an extra, installed or not, and lets
    # the import go on as usual.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            tried.add(name)
        return None

sys.meta_path.insert(0, Watch())
import fmcli.cli
import fmcli.cli.libffm_compat

def fm(*args):
    sys.argv = ["fm", *args]
    try:
        fmcli.cli.main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)

for name in sorted(fmcli.cli.cli.commands):
    fm(name, "--help")
fm("convert", "data.ffm", "-o", "data.svm")
fm("train", "-q", "--model", "ffm", "-k", "2", "-t", "1", "data.ffm", "-p", "data.ffm", "-o", "m.fm")
fm("predict", "-q", "m.fm", "data.svm", "-o", "p.txt")
fm("inspect", "m.fm")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS)
print(json.dumps({{"tried": sorted(tried), "loaded": loaded}}))
"""


def test_the_plain_cli_leaves_optional_extras_alone(tmp_path):
    """At run time: importing fmcli.cli, every command's --help, and a CPU
    convert / train / predict / inspect neither load an extra nor try to
    (an attempt is caught even where the extra is not installed)."""
    rows = ["1 0:1:1 1:5:0.5 2:9:1", "0 0:2:1 1:6:1 2:9:0.25", "1 0:1:1 1:7:1 2:8:1",
            "0 0:3:1 1:6:0.5 2:8:1"] * 5
    (tmp_path / "data.ffm").write_text("\n".join(rows) + "\n")
    code = textwrap.dedent(_WATCH).format(extras=set(OPTIONAL_EXTRAS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"tried": [], "loaded": []}, report


# ---------------------------------------------------------------------------
# the checks themselves, on made-up packages (each must be able to fail)
# ---------------------------------------------------------------------------

def _fake_package(tmp_path, files: dict[str, str]) -> dict[str, str]:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return discover(str(tmp_path / PACKAGE))


def test_reader_resolves_relative_absolute_and_function_imports(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "from ._version import __version__\n",
        "_version.py": "__version__ = '1'\n",
        "errors.py": "",
        "sub/__init__.py": "from . import leaf\nfrom .. import __version__\n",
        "sub/leaf.py": """
            import os
            import fmcli.errors
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from fmcli.sub import other
            def f():
                from ..errors import FMError
                from . import other, missing_name
                import fmcli.sub.nothing_here
            """,
        "sub/other.py": "from .leaf import *\n",
        "core/__init__.py": "",
        "core/fast.pyx": "from libc.math cimport sqrt\ncimport numpy\nimport numpy as np\n"
                         "from ..errors import (FMError,\n    DataError)\n",
    })
    imports = read_imports(modules)
    g = graph(internal(imports, modules))
    assert set(g["fmcli"]) == {"fmcli._version"}
    assert set(g["fmcli.sub"]) == {"fmcli.sub.leaf", "fmcli"}     # leaf is a module, __version__ is not
    leaf = g["fmcli.sub.leaf"]
    assert set(leaf) == {"fmcli.errors", "fmcli.sub.other", "fmcli.sub"}
    assert leaf["fmcli.errors"].eager and not leaf["fmcli.sub.other"].eager
    assert set(g["fmcli.sub.other"]) == {"fmcli.sub.leaf"}
    assert set(g["fmcli.core.fast"]) == {"fmcli.errors"}
    outside = {i.target for i in imports if i.source == "fmcli.core.fast"}
    assert outside == {"numpy", "fmcli.errors"}                   # no cimport
    assert "os" in {i.target for i in imports if i.source == "fmcli.sub.leaf"}


def test_cycles_are_found_and_told_as_chains(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "train.py": "from .gpu import state\n",
        "gpu/__init__.py": "",
        "gpu/state.py": "def f():\n    from .. import train\n",
        "a.py": "from . import b\n",
        "b.py": "from . import c\n",
        "c.py": "from . import a\n",
        "d.py": "from . import a\n",
    })
    g = graph(internal(read_imports(modules), modules))
    found = cycles(g)
    assert found == [["fmcli.a", "fmcli.b", "fmcli.c", "fmcli.a"],
                     ["fmcli.gpu.state", "fmcli.train", "fmcli.gpu.state"]]
    text = describe_cycle(found[1], g, modules)
    assert text.startswith("fmcli.gpu.state -> fmcli.train -> fmcli.gpu.state")
    assert "state.py:2 (in a function)" in text and "train.py:1" in text
    del g["fmcli.gpu.state"]
    assert cycles(g) == [["fmcli.a", "fmcli.b", "fmcli.c", "fmcli.a"]]


def test_layers_catch_an_upward_import_and_an_unplaced_module():
    layers = ((0, "base", ("fmcli.errors",)), (1, "data", ("fmcli.data.*",)),
              (2, "front", ("fmcli", "fmcli.cli.*", "fmcli.data.special")))
    assert layer_of("fmcli.data.text", layers) == 1
    assert layer_of("fmcli.data", layers) == 1
    assert layer_of("fmcli.data.special", layers) == 2     # the exact entry wins
    assert layer_of("fmcli", layers) == 2 and layer_of("fmcli.train", layers) is None
    edges = [Import("fmcli.data.text", "fmcli.errors", 3, True),
             Import("fmcli.cli.x", "fmcli.data.text", 4, True),
             Import("fmcli.data.text", "fmcli", 9, False)]
    assert upward_imports(edges, layers) == [
        "fmcli.data.text (layer 1, data) imports fmcli (layer 2, front) at line 9 (in a function)"]


def test_eager_closure_follows_module_level_imports_and_parents(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "cli/__init__.py": "from . import run\n",
        "cli/run.py": "from ..gpu import plan\ndef f():\n    from ..gpu import device\n",
        "gpu/__init__.py": "",
        "gpu/plan.py": "",
        "gpu/device.py": "import cupy\n",
    })
    imports = read_imports(modules)
    assert eager_closure("fmcli.cli", imports, modules) == {
        "fmcli", "fmcli.cli", "fmcli.cli.run", "fmcli.gpu", "fmcli.gpu.plan"}
    assert "fmcli.gpu.device" in eager_closure("fmcli.gpu.device", imports, modules)
