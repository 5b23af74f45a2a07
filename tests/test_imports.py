"""No import circles, no plugin reaching up into the code that runs it, and no plugin importing another plugin.

Two checks of the modules of lab/, defenses/ and attacks/:

1. static: the graph of module-level imports between them (parsed with ``ast``; imports inside functions run late
   and are left out, as are ``if TYPE_CHECKING:`` blocks) has no cycle, the plugin packages (defenses/, attacks/,
   lab/models/) import, anywhere in a file, nothing of the code that runs them and nothing beyond the plugin
   interface, and no module that registers a plugin imports another module that registers one (what two plugins
   share lives in lab/dsp.py or in a shared module that registers nothing, such as defenses/_patches.py);
2. at run time: every module imports ALONE in a fresh interpreter, so no module works only when another happened to
   be imported first. A new interpreter per module costs a torch import each (4 s here), so one interpreter imports
   the third-party libraries the project imports (and no project module), then forks one child per project module,
   two at a time: each child starts with no project module imported.

Each check is first run on a small package with a planted circle, to show that it catches one.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
ROOTS = ("lab", "defenses", "attacks")
PLUGIN_PACKAGES = ("defenses", "attacks", "lab.models")
RUNNERS = ("lab.attacking", "lab.experiment", "lab.commands", "lab.cli")  # the code that runs plugins
PLUGIN_INTERFACE = ("lab.config", "lab.registry", "lab.keys", "lab.errors", "lab.dsp",  # what a plugin may use of lab/
                    "lab.masking", "lab.augment")
NOT_IMPORTABLE = {"lab.__main__"}  # runs the command line when imported


# --- the import graph ------------------------------------------------------------------------------------------------

def project_modules(repo: Path, roots=ROOTS) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the root packages."""
    out = {}
    for root in roots:
        for path in sorted((repo / root).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _statements(tree: ast.AST, module_level: bool):
    """Import statements of a parsed file: all of them, or those that run when the module is imported."""
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if module_level and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known, module_level: bool = True) -> set[str]:
    """The project modules ``name`` (file ``path``) imports: ``import a.b`` -> a.b; ``from a import b`` -> a.b
    when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _statements(ast.parse(path.read_text(), str(path)), module_level):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # import a.b.c of a package a.b without c listed
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(repo: Path, roots=ROOTS) -> dict[str, set[str]]:
    mods = project_modules(repo, roots)
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def plugin_imports(repo: Path, roots=ROOTS, plugin_packages=PLUGIN_PACKAGES) -> dict[str, set[str]]:
    """Every import (function-level ones too) of every module of the plugin packages."""
    mods = project_modules(repo, roots)
    return {name: imports_of(name, path, mods, module_level=False) for name, path in mods.items()
            if _under(name, plugin_packages)}


def registers(path: Path) -> bool:
    """Whether a file registers a plugin: it calls ``register`` on a registry (an all-capitals name such as
    ``DEFENSES`` or ``base.DEFENSES``), as a decorator ``@DEFENSES.register("name")`` or directly."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register":
            registry = node.func.value
            name = registry.id if isinstance(registry, ast.Name) else getattr(registry, "attr", "")
            if name.isupper():
                return True
    return False


def plugins_importing_plugins(repo: Path, roots=ROOTS) -> dict[str, list[str]]:
    """For every module that registers a plugin: the other plugin-registering modules it imports (anywhere in the
    file, function-level imports too); only modules that import some."""
    mods = project_modules(repo, roots)
    plugins = {name for name, path in mods.items() if registers(path)}
    found = {name: sorted(imports_of(name, mods[name], mods, module_level=False) & plugins) for name in plugins}
    return {name: targets for name, targets in found.items() if targets}


# --- importing each module alone -------------------------------------------------------------------------------------

DRIVER = r'''
import importlib, json, os, sys, traceback
preload, names, jobs, outdir = json.loads(sys.argv[1])
for lib in preload:
    try:
        importlib.import_module(lib)
    except BaseException:
        pass
roots = {n.split(".")[0] for n in names}
early = sorted(m for m in sys.modules if m.split(".")[0] in roots)
if early:
    print(json.dumps({"<preload>": "project modules imported before the children start: " + ", ".join(early)}))
    sys.exit(0)
failed, running, todo = {}, {}, list(names)
while todo or running:
    while todo and len(running) < jobs:
        name = todo.pop(0)
        err = os.path.join(outdir, name + ".err")
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                importlib.import_module(name)
            except BaseException:
                with open(err, "w") as f:
                    f.write(traceback.format_exc())
                code = 1
            os._exit(code)
        running[pid] = (name, err)
    pid, status = os.wait()
    name, err = running.pop(pid)
    if os.waitstatus_to_exitcode(status) != 0:
        failed[name] = open(err).read() if os.path.exists(err) else f"exit status {status}"
print(json.dumps(failed))
'''


def third_party(repo: Path, roots=ROOTS) -> list[str]:
    """The non-project modules the project imports at module level (to import once, before the children)."""
    mods = project_modules(repo, roots)
    out = set()
    for path in mods.values():
        for node in _statements(ast.parse(path.read_text()), module_level=True):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if node.module and not node.level else []
            out.update(n for n in names if n.split(".")[0] not in roots and n != "__future__")
    return sorted(out)


def import_each_alone(repo: Path, names: list[str], preload: list[str], tmp: Path, jobs: int = 2) -> dict[str, str]:
    """name -> traceback, for each module of ``names`` that fails to import alone in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("LAB_PLUGINS", None)
    if not hasattr(os, "fork"):  # one interpreter per module
        failed = {}
        for name in names:
            proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=repo, env=env, capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode:
                failed[name] = proc.stderr
        return failed
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([preload, names, jobs, str(tmp)])], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the planted circle: each check must catch it --------------------------------------------------------------------

def planted(tmp_path: Path) -> Path:
    """A package ``circ`` whose modules a and b import each other at module level (so neither imports alone), and
    a plugin package ``circ.plug`` that imports a runner inside a function."""
    files = {
        "circ/__init__.py": "",
        "circ/a.py": "from circ.b import B\nA = 1\n",
        "circ/b.py": "from circ.a import A\nB = 2\n",
        "circ/fine.py": "import circ.leaf\n",
        "circ/leaf.py": "X = 1\n",
        "circ/run.py": "from circ.plug.one import P\n",
        "circ/plug/__init__.py": "",
        "circ/plug/one.py": "P = 1\n\ndef later():\n    from circ.run import P  # reaching up\n    return P\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checks_catch_a_planted_circle(tmp_path):
    repo = planted(tmp_path / "repo")
    graph = import_graph(repo, ("circ",))
    assert graph["circ.a"] == {"circ.b"} and graph["circ.fine"] == {"circ.leaf"}
    assert graph["circ.plug.one"] == set(), "a function-level import is not a module-level edge"
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"circ.a", "circ.b"} and cycle[0] == cycle[-1]
    assert plugin_imports(repo, ("circ",), ("circ.plug",))["circ.plug.one"] == {"circ.run"}
    failed = import_each_alone(repo, ["circ.a", "circ.b", "circ.fine", "circ.plug.one"], [], tmp_path)
    assert set(failed) == {"circ.a", "circ.b"}, failed
    assert "ImportError" in failed["circ.a"] and "partially initialized" in failed["circ.a"]


# --- the project ---------------------------------------------------------------------------------------------------

def test_no_import_circle_in_the_project():
    graph = import_graph(REPO)
    assert {"attacks.base", "lab.spine", "lab.train"} <= graph["lab.attacking.training"]
    assert "defenses.base" in graph["defenses.poscuda"] and "lab.models" in graph["lab.recipe"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_plugins_never_import_the_code_that_runs_them():
    found = plugin_imports(REPO)
    assert "attacks.clean_finetune" in found and "defenses.poscuda" in found and "lab.models.cnn" in found
    reaching_up = {name: sorted(t for t in targets if _under(t, RUNNERS)) for name, targets in found.items()}
    reaching_up = {name: targets for name, targets in reaching_up.items() if targets}
    assert not reaching_up, f"plugins import the code that runs them: {reaching_up}"
    beyond = {name: sorted(t for t in targets if not _under(t, PLUGIN_PACKAGES + PLUGIN_INTERFACE))
              for name, targets in found.items()}
    beyond = {name: targets for name, targets in beyond.items() if targets}
    assert not beyond, f"plugins use more of lab/ than the plugin interface {PLUGIN_INTERFACE}: {beyond}"


def test_the_plugin_check_catches_a_plugin_importing_another(tmp_path):
    files = {
        "pk/__init__.py": "",
        "pk/base.py": "class Registry:\n    def register(self, name):\n        return lambda cls: cls\n\n"
                      "THINGS = Registry()\n",
        "pk/_shared.py": "from pk.base import THINGS\n\ndef helper():\n    return 1\n",
        "pk/one.py": "from pk._shared import helper\nfrom pk.base import THINGS\n\n@THINGS.register('one')\n"
                     "class One:\n    pass\n",
        "pk/two.py": "from pk.base import THINGS\n\n@THINGS.register('two')\nclass Two:\n    def f(self):\n"
                     "        from pk.one import One  # a plugin reaching into another, late\n        return One\n",
        "pk/three.py": "import pk.base\n\nclass Three:\n    pass\n\npk.base.THINGS.register('three')(Three)\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert [registers(tmp_path / "pk" / f) for f in ("base.py", "_shared.py", "one.py", "two.py", "three.py")] == \
        [False, False, True, True, True]
    assert plugins_importing_plugins(tmp_path, ("pk",)) == {"pk.two": ["pk.one"]}


def test_no_plugin_module_imports_another():
    graph = plugin_imports(REPO)
    assert "defenses._patches" in graph["defenses.noise_patch"] and "lab.dsp" in graph["attacks.augment"]
    found = plugins_importing_plugins(REPO)
    assert not found, (f"plugin modules import other plugin modules (move what they share to lab/dsp.py or a "
                       f"module that registers nothing, e.g. defenses/_patches.py): {found}")


def test_every_module_imports_alone_in_a_fresh_interpreter(tmp_path):
    names = [n for n in project_modules(REPO) if n not in NOT_IMPORTABLE]
    assert len(names) > 50 and "attacks.clean_finetune" in names and "lab.commands.attack" in names
    failed = import_each_alone(REPO, names, third_party(REPO), tmp_path)
    assert not failed, "\n\n".join(f"{name}:\n{tb}" for name, tb in failed.items())
