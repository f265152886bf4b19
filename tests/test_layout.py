"""The package's house rules: no import cycle, deployment and visualisation free of the model
families, a cheap ``import efficientmod``, and ``efficientmod.deploy`` the fusion function."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "efficientmod"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(tree: ast.AST, module: str, is_package: bool, type_checking: bool = False):
    """Every module imported anywhere in ``tree`` (function bodies included, blocks under
    ``if TYPE_CHECKING:`` left out unless ``type_checking``), relative imports resolved. ``from a import b`` imports
    the module ``a.b`` when there is one, else (a name defined in) ``a``; a string that is a
    module's full name counts as an import of it (``importlib.import_module``, lazy tables)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node) and not type_checking:
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Constant) and node.value in MODULES and "." in node.value:  # import_module("...")
            yield node.value
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """module → the package's modules it imports. A submodule's implicit import of its
    parent packages is not an edge: importing a sibling from a partly initialised package
    works, so ``efficientmod.models`` importing its families, which import
    ``efficientmod.models.registry``, is no cycle."""
    graph = {}
    for module, path in MODULES.items():
        imported = _imported_modules(ast.parse(path.read_text()), module, path.name == "__init__.py", type_checking)
        graph[module] = {name for name in imported if name in MODULES and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "efficientmod.checkpoint" in graph["efficientmod.models.registry"]  # inside create_model
    assert "efficientmod.models.registry" in graph["efficientmod.models.pretrained"]
    assert "efficientmod.cli.train" in graph["efficientmod.cli"]


def test_the_package_has_no_import_cycle():
    """Not even through imports made for type hints only (``if TYPE_CHECKING:``)."""
    cycle = find_cycle(import_graph(type_checking=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", ["efficientmod.fuse", "efficientmod.viz", "efficientmod.checkpoint"])
def test_generic_modules_import_no_model_family(module):
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:  # everything the module pulls in, directly or not
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert not {m for m in seen if m.startswith("efficientmod.models")}, sorted(seen)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(name for name in MODULES if not name.endswith("__main__"))  # that one runs the command
    result = _run("import importlib, sys\n"
                  f"for name in {names!r}:\n"
                  "    importlib.import_module(name)\n"
                  "print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_import_efficientmod_is_light():
    result = _run("import sys, efficientmod\n"
                  "heavy = sorted(m for m in ('timm', 'torchvision', 'efficientmod.models', 'efficientmod.fuse')"
                  " if m in sys.modules)\n"
                  "print(heavy, efficientmod.__version__)")
    assert result.returncode == 0, result.stderr[-3000:]
    heavy, version = result.stdout.rsplit(" ", 1)
    assert heavy == "[]" and version.strip()


def test_deploy_is_the_fusion_function():
    result = _run("import torch, efficientmod\n"
                  "import efficientmod.fuse\n"
                  "assert efficientmod.deploy is efficientmod.fuse.deploy\n"
                  "model = efficientmod.create_model('efficientvit_m0', num_classes=3)\n"
                  "x = torch.randn(1, 3, 64, 64)\n"
                  "expected = model.eval()(x)\n"
                  "assert efficientmod.deploy(model) is model and efficientmod.fuse.is_deployed(model)\n"
                  "assert (model(x) - expected).abs().max() < 1e-4\n"
                  "print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_constructors_reach_their_parents_through_super():
    """No class skips its parent's constructor by calling a grandparent's directly (as
    fused blocks did with ``nn.Module.__init__(self)``)."""
    direct = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
                    and not (isinstance(node.func.value, ast.Call) and ast.unparse(node.func.value) == "super()")):
                direct.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert direct == []


@pytest.mark.parametrize("order", ["efficientmod_first", "timm_first"])
def test_import_efficientmod_registers_every_variant_in_timm(order):
    """README and every model card promise it: ``import efficientmod`` is enough for timm (and
    timm's scripts, ``local-dir:`` / ``hf-hub:`` loading, transformers' TimmWrapper) to build
    every variant, whichever of the two is imported first - and --help still imports no timm."""
    imports = "import efficientmod, timm" if order == "efficientmod_first" else "import timm, efficientmod"
    result = _run(f"{imports}\n"
                  "import torch\n"
                  "from efficientmod.models import model_info, list_models\n"
                  "names = [model_info(n).timm_name for n in list_models()]\n"
                  "assert len(names) == 17 and all(timm.is_model(n) for n in names), names\n"
                  "for name in names:\n"
                  "    model = timm.create_model(name, num_classes=3)\n"
                  "    assert model.num_classes == 3 and model.registry_name\n"
                  "print(len(names))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) == 17


# -- which part of the package may import which (docs/architecture.md draws the same) ---------
CORE = {"checkpoint", "images", "preprocessing", "metadata", "runtime", "fuse", "viz", "config_flags"}
MAY_IMPORT = {
    "checkpoint": set(), "images": set(), "fuse": set(), "viz": {"checkpoint"}, "config_flags": set(),
    "preprocessing": {"images"},
    "metadata": {"preprocessing", "images"},
    "runtime": {"checkpoint"},
    "models": CORE,
    "timm_registration": {"models"},
    "export": CORE,
    "dense": CORE | {"models"},
    "bench": CORE | {"models", "export"},
    "classify": CORE | {"models", "export", "bench"},
    "serve": CORE | {"models", "export", "classify"},
    "cli": CORE | {"efficientmod", "models", "export", "dense", "bench", "classify", "serve"},
    "__main__": {"cli"},
    "efficientmod": {"timm_registration", "models", "checkpoint", "fuse", "export"},  # the lazy public API
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "efficientmod"


def test_each_part_imports_only_what_it_may():
    graph = import_graph()
    parts = {_part(module) for module in graph}
    assert parts <= set(MAY_IMPORT), f"parts with no rule: {sorted(parts - set(MAY_IMPORT))}"
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                   if _part(target) != _part(module) and _part(target) not in MAY_IMPORT[_part(module)])
    assert wrong == []


def test_files_and_functions_stay_short():
    """No file over 600 lines and no function over 60 in the package."""
    too_long = []
    for module, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > 600:
            too_long.append(f"{module}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def _architecture_tree() -> dict[str, set[str]]:
    """package ('' for the top level) -> the module and package names docs/architecture.md's
    tree lists under it."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = text.split("```\nefficientmod/\n", 1)[1].split("```", 1)[0]
    tree: dict[str, set[str]] = {"": set()}
    package = ""
    for line in block.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.strip():  # an entry of efficientmod/
            name = line.split()[0]
            package = name.rstrip("/") if name.endswith("/") and len(line.split()) == 1 else ""
            tree[""].add(name.rstrip("/"))
            tree.setdefault(package, set())
            if package:
                continue
        elif line.startswith("    ") and line[4] != " ":  # an entry of a package
            tree.setdefault(package, set()).add(line.split()[0])
        elif not line.startswith(" "):  # tests/, benchmarks/, docs/
            package = ""
        for word in line.split():  # "... ; synthetic.py: tiny generated data sets"
            if word.rstrip(":,;").endswith(".py"):
                tree.setdefault(package, set()).add(word.rstrip(":,;"))
    return tree


def test_architecture_page_names_every_module():
    tree = _architecture_tree()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        package = relative.parts[0] if len(relative.parts) > 1 else ""
        name = relative.name
        if package == "cli":  # drawn as one entry
            continue
        if name == "__init__.py" and package:
            if package not in tree[""]:
                missing.append(f"{package}/")
        elif name not in tree.get(package, set()):
            missing.append(str(relative))
    assert missing == [], f"docs/architecture.md's tree lacks {missing}"
    listed_packages = {p for p in tree if p}
    assert listed_packages <= {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}


def test_readme_layout_is_ls_of_the_package():
    """README's "Layout of the code" block names every entry of ``ls efficientmod/``, and nothing else."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout of the code", 1)[1].split("```\nefficientmod/\n", 1)[1].split("```", 1)[0]
    listed = {word.rstrip("/") for line in block.splitlines() for word in line.split("   ")[0].split()}
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info")}
    assert listed == entries, f"README lists {sorted(listed - entries)} in vain and lacks {sorted(entries - listed)}"
