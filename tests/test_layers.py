"""The package layering of tritongpt's subpackages: imports between them run only down, no module imports one that imports
it back, and no function-level import of our own modules (those are only for optional third-party
packages such as transformers, wandb or matplotlib).

    profiles   -> bench, train, gpt, kernels, instrument
    bench      -> train, prep, gpt, kernels, instrument
    train      -> prep, gpt, kernels, instrument
    gpt        -> kernels, instrument
    prep       -> instrument
    kernels    -> instrument
    instrument -> (nothing of ours)

The checker reads every .py file of the subpackages with `ast` (nothing is imported), so a
violation is reported with its file and line; module names are written without the `tritongpt.`
prefix. `python tests/test_layers.py` prints the package import graph.
"""

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "tritongpt"

ALLOWED = {
    "profiles": {"bench", "train", "gpt", "kernels", "instrument"},
    "bench": {"train", "prep", "gpt", "kernels", "instrument"},
    "train": {"prep", "gpt", "kernels", "instrument"},
    "gpt": {"kernels", "instrument"},
    "prep": {"instrument"},
    "kernels": {"instrument"},
    "instrument": set(),
}
PACKAGES = tuple(ALLOWED)


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, e.g. "train.loop"
    target: str  # the imported module of ours, e.g. "gpt.model"
    path: str  # the importing file, relative to the root
    line: int
    module_level: bool  # False inside a def or class body, or under `if TYPE_CHECKING`

    def where(self):
        return f"{self.path}:{self.line}"


# ----------------------------------------------------------------------------- reading the files


def module_name(path, root):
    """train/loop.py -> train.loop; gpt/__init__.py -> gpt."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files(root, packages=PACKAGES):
    return sorted(p for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py"))


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree):
    """(node, module_level) for every import statement of a module."""

    def visit(node, module_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, module_level
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:  # the `else` branch runs at import time
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), module_level)
            else:
                yield from visit(child, module_level)

    yield from visit(tree, True)


def local(name):
    """tritongpt.gpt.model -> gpt.model: our modules by their names inside the namespace."""
    return name[len(NAMESPACE) + 1 :] if name.startswith(NAMESPACE + ".") else name


def imports_of(source, importer, path, modules, is_package=False):
    """The imports of our own modules in `source`, each resolved to the module it loads: `from a
    import b` is a.b when that is a module, else a; `import a.b.c` is the longest prefix that is."""

    def resolve(name):
        parts = local(name).split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    package = importer if is_package else importer.rpartition(".")[0]
    out = []
    for node, module_level in _import_nodes(ast.parse(source, filename=path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [resolve(alias.name) for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = local(f"{base}.{alias.name}" if base else alias.name)
                targets.append(sub if sub in modules else resolve(base))
        for target in dict.fromkeys(targets):  # one record per module a statement loads
            if target is not None and target.split(".")[0] in PACKAGES:
                out.append(Import(importer, target, path, node.lineno, module_level))
    return out


def collect(root, packages=PACKAGES):
    """Every import of our modules made by the files of `packages` under `root`."""
    files = product_files(root, packages)
    modules = {module_name(p, root) for p in files} | {module_name(p, root) for p in root.glob("*/__init__.py")}
    out = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        out += imports_of(p.read_text(encoding="utf-8"), module_name(p, root), rel, modules, p.name == "__init__.py")
    return out


# ----------------------------------------------------------------------------- the three rules


def layer_violations(imports):
    """Imports of a package that the layering does not allow below the importer's."""
    bad = []
    for imp in imports:
        src, dst = imp.importer.split(".")[0], imp.target.split(".")[0]
        if src != dst and dst not in ALLOWED.get(src, set()):
            allowed = ", ".join(sorted(ALLOWED.get(src, ()))) or "nothing of ours"
            bad.append(f"{imp.where()}: {imp.importer} imports {imp.target}, but {src} may import only {allowed}")
    return bad


def function_level_violations(imports):
    """Imports of our own modules inside a function or class body, or under `if TYPE_CHECKING`."""
    return [
        f"{imp.where()}: {imp.importer} imports {imp.target} inside a function, class or TYPE_CHECKING block; "
        "import it at module level (function-level imports are for optional third-party packages)"
        for imp in imports
        if not imp.module_level
    ]


def cycles(imports):
    """Every circle of the module-level import graph, each as the list of imports that close it."""
    edges = {}
    for imp in imports:
        if imp.module_level:
            edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    # Tarjan's strongly connected components, then one concrete circle through each component.
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, {}):
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    found = []
    for comp in comps:
        start = min(comp)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats
            nxt = min(w for w in edges[path[-1]] if w in comp)
            if nxt in seen:
                loop = path[path.index(nxt) :] + [nxt]
                break
            path.append(nxt)
            seen.add(nxt)
        found.append([edges[a][b] for a, b in zip(loop, loop[1:], strict=False)])
    return found


def describe_cycle(cycle):
    return " -> ".join([cycle[0].importer] + [imp.target for imp in cycle]) + " (" + ", ".join(
        f"{imp.importer} at {imp.where()}" for imp in cycle
    ) + ")"


def package_graph(imports):
    """{package: sorted packages of ours it imports}, every import counted."""
    graph = {pkg: set() for pkg in PACKAGES}
    for imp in imports:
        src, dst = imp.importer.split(".")[0], imp.target.split(".")[0]
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    return {pkg: sorted(graph[pkg], key=PACKAGES.index) for pkg in graph}


# ----------------------------------------------------------------------------- the tree


@pytest.fixture(scope="module")
def tree_imports():
    imports = collect(ROOT / NAMESPACE)
    assert len(imports) > 50, "the checker found almost no imports: is it reading the packages?"
    return imports


def test_packages_import_only_down(tree_imports):
    bad = layer_violations(tree_imports)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles(tree_imports):
    found = cycles(tree_imports)
    assert not found, "modules that import each other:\n" + "\n".join(describe_cycle(c) for c in found)


def test_no_function_level_imports_of_our_modules(tree_imports):
    bad = function_level_violations(tree_imports)
    assert not bad, "function-level imports of our modules:\n" + "\n".join(bad)


def test_one_top_level_package():
    """Only `tritongpt` is importable from the repository root as a regular package, and only it
    is installed, so no folder of ours shadows another distribution's package (transformers
    imports Hugging Face's `kernels`) or is shadowed by one, whatever the working directory."""
    regular = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert regular == [NAMESPACE], f"folders at the root that Python imports as packages: {regular}"
    modules = sorted(p.stem for p in ROOT.glob("*.py"))
    assert not modules, f"modules at the root, importable from it: {modules}"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'include = ["tritongpt*"]' in pyproject, "pyproject.toml must install tritongpt's packages only"


def test_the_package_never_imports_tools():
    """tools/ (the GPU campaign, the compile audit, the warm cache) drives the package from outside
    and is not installed: no module of the package imports one of its scripts."""
    scripts = {p.stem for p in (ROOT / "tools").glob("*.py")}
    assert {"campaign", "aot", "warm_cache"} <= scripts
    bad = []
    for path in product_files(ROOT / NAMESPACE):
        for node, _ in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {n}" for n in names
                    if n.split(".")[0] in scripts | {"tools"} and not getattr(node, "level", 0)]
    assert not bad, "the package imports tools/:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the checker itself


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return collect(root)


def test_checker_names_an_upward_import(tmp_path):
    imports = _write(tmp_path, {
        "kernels/__init__.py": "",
        "kernels/ops.py": "import torch\n\nfrom tritongpt.gpt.model import GPT\n",
        "gpt/__init__.py": "from tritongpt.gpt.model import GPT\n",
        "gpt/model.py": "import tritongpt.kernels\nfrom tritongpt.instrument import nvtx\n",
        "instrument/__init__.py": "",
        "instrument/nvtx.py": "",
    })
    bad = layer_violations(imports)
    assert len(bad) == 1 and bad[0].startswith("kernels/ops.py:3: kernels.ops imports gpt.model"), bad
    assert "kernels may import only instrument" in bad[0]


def test_checker_finds_a_cycle_and_a_self_import(tmp_path):
    imports = _write(tmp_path, {
        "prep/__init__.py": "from tritongpt.prep.dataset import load\n",
        "prep/dataset.py": "import os\nfrom tritongpt.prep.tokenizer import Char\n",
        "prep/tokenizer.py": "from tritongpt.prep import errors\nfrom tritongpt.prep.dataset import DatasetError\n",
        "prep/errors.py": "import tritongpt.prep.errors\n",
    })
    found = cycles(imports)
    assert len(found) == 2, [describe_cycle(c) for c in found]
    text = [describe_cycle(c) for c in found]
    assert any(t.startswith("prep.dataset -> prep.tokenizer -> prep.dataset (") for t in text), text
    assert any("prep/tokenizer.py:2" in t and "prep/dataset.py:2" in t for t in text), text
    assert any(t.startswith("prep.errors -> prep.errors") for t in text), text


def test_checker_counts_a_main_guard_import_as_module_level(tmp_path):
    """`if __name__ == "__main__": from a import b` still closes a circle when b imports a."""
    imports = _write(tmp_path, {
        "train/__init__.py": "",
        "train/__main__.py": "from tritongpt.train.sample import sample\n",
        "train/sample.py": 'import sys\n\nif __name__ == "__main__":\n    from tritongpt.train.__main__ import run_cli\n',
    })
    assert [describe_cycle(c).split(" (")[0] for c in cycles(imports)] == ["train.__main__ -> train.sample -> train.__main__"]


def test_checker_flags_function_level_and_type_checking_imports(tmp_path):
    imports = _write(tmp_path, {
        "gpt/__init__.py": "",
        "gpt/hf.py": "from tritongpt.gpt.config import GPTConfig\n",
        "gpt/config.py": "",
        "gpt/model.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from tritongpt.gpt.hf import HF\n"
            "else:\n"
            "    import tritongpt.gpt.config\n"
            "class GPT:\n"
            "    def save(self):\n"
            "        import transformers\n"
            "        from . import hf\n"
            "        return hf\n"
        ),
    })
    bad = function_level_violations(imports)
    assert [b.split(": ")[0] for b in bad] == ["gpt/model.py:3", "gpt/model.py:9"], bad
    assert "gpt.model imports gpt.hf inside a function" in bad[1]
    assert not layer_violations(imports) and not cycles(imports)


def test_checker_resolves_relative_and_from_package_imports(tmp_path):
    imports = _write(tmp_path, {
        "bench/__init__.py": "",
        "bench/step.py": "from . import config\nfrom .config import Settings\nfrom tritongpt.gpt import GPT\nimport tritongpt.gpt.flops as f\n",
        "bench/config.py": "",
        "gpt/__init__.py": "",
        "gpt/flops.py": "",
    })
    assert sorted((i.importer, i.target) for i in imports) == [
        ("bench.step", "bench.config"), ("bench.step", "bench.config"), ("bench.step", "gpt"), ("bench.step", "gpt.flops"),
    ]
    assert package_graph(imports)["bench"] == ["gpt"]


def test_checker_passes_a_clean_tree(tmp_path):
    imports = _write(tmp_path, {
        "instrument/__init__.py": "",
        "instrument/run.py": "import subprocess\n",
        "kernels/__init__.py": "from tritongpt.kernels import reference\n",
        "kernels/reference.py": "import torch\n",
        "profiles/capture.py": "from tritongpt.bench import step\nfrom tritongpt.instrument import nvtx\n\ndef f():\n    import matplotlib\n",
        "bench/step.py": "from tritongpt.gpt import GPT\nfrom tritongpt.train.config import load_config\n",
    })
    assert not layer_violations(imports) and not cycles(imports) and not function_level_violations(imports)


if __name__ == "__main__":
    for pkg, deps in package_graph(collect(ROOT / NAMESPACE)).items():
        print(f"{pkg:<10} -> {', '.join(deps) or '(nothing of ours)'}")
    sys.exit(0)
