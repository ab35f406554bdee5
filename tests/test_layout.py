"""The package's layout: own modules imported at the top, no import cycle, short functions, a light CLI.

A module imports the package's own modules at its top, so what it depends on is read in one place.
An import inside a function is allowed only where a heavy optional dependency or an import cycle
it would close requires it, and the line says why (``# lazy: ...``). Third-party libraries
(torch, transformers, faiss...) stay imported inside functions: the checks here are about our own
modules, and the last one that the CLI parser stays light.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "rag_pipeline"
MAX_FUNCTION_LINES = 90
LAZY = "# lazy:"
# Libraries that take seconds to import: building the parser (``--help``) must import none of them.
HEAVY = ("torch", "transformers", "peft", "sentence_transformers", "faiss", "fastapi", "ray", "datasets", "accelerate", "bm25s")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package at ``root``: name -> (path, syntax tree)."""
    return {module_name(p, root): (p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(root.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules an import statement needs: the module named, or for ``from X import y``
    the module ``X.y`` (when ``y`` is a module) or ``X`` (when ``y`` is a name defined in it)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        pkg = importer.split(".") if is_package else importer.split(".")[:-1]
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names} & known


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def top_level_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it is imported (``if TYPE_CHECKING`` blocks excepted)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in mods.items():
        edges: set[str] = set()
        stack: list[ast.stmt] = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, name, path.name == "__init__.py", set(mods)):
                    # the target, and its packages (their __init__ runs first) other than the importer's own
                    edges |= {target} | (_ancestors(target) & set(mods)) - _ancestors(name)
            elif isinstance(node, (ast.If, ast.Try)) and not _type_checking(node):
                stack += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                          *(s for h in getattr(node, "handlers", []) for s in h.body)]
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def functions(root: Path):
    for name, (path, tree) in modules(root).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def unexplained_lazy_imports(root: Path) -> list[str]:
    """``path:line statement`` of each import of the package's own modules inside a function whose line has no ``# lazy:`` reason."""
    known = set(modules(root))
    out = []
    for path, fn in functions(root):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and imported(node, module_name(path, root), path.name == "__init__.py", known):
                if LAZY not in "\n".join(lines[node.lineno - 1:node.end_lineno]):
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {ast.unparse(node)}")
    return sorted(set(out))


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return sorted(f"{path.relative_to(root.parent)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
                  for path, fn in functions(root) if fn.end_lineno - fn.lineno + 1 > limit)


def test_own_modules_are_imported_at_the_top() -> None:
    """Move the import to the module's top; where that is impossible, say why on its line (``# lazy: ...``)."""
    assert unexplained_lazy_imports(PACKAGE) == []


def test_top_level_imports_form_no_cycle() -> None:
    """A cycle means a type or function lives in the wrong module: move it to the one both should import."""
    assert find_cycle(top_level_graph(PACKAGE)) is None


def test_no_function_passes_90_lines() -> None:
    assert long_functions(PACKAGE) == []


def test_building_the_cli_parser_imports_no_heavy_library() -> None:
    """``rag-pipeline --help`` imports every command's module (for its config class): they import
    torch and the other heavy libraries inside functions, never at their top."""
    code = ("import sys; import rag_pipeline.cli as cli; cli.build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_layout_checks_find_each_violation(tmp_path: Path) -> None:
    """Each check above reports a violation planted in a small package (and accepts its explained lazy import)."""
    pkg = tmp_path / "pkg"
    files = {
        "__init__.py": "",
        "a.py": "from pkg.b import B\nA = 1\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import f\nfrom pkg import a\nB = 2\n",
        "c.py": ("def f():\n    from pkg.a import A\n    return A\n\n\n"
                 "def g():\n    from pkg import b  # lazy: b is slow to import\n    import json\n    return b, json\n"),
        "sub/__init__.py": "from pkg.sub import d\n",
        "sub/d.py": "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    return x\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(text))
    assert unexplained_lazy_imports(pkg) == ["pkg/c.py:2 from pkg.a import A"]
    graph = top_level_graph(pkg)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.sub"] == {"pkg.sub.d"}  # not TYPE_CHECKING's, nor its own packages
    assert graph["pkg.sub.d"] == set() and graph["pkg.a"] == {"pkg.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert long_functions(pkg) == [f"pkg/sub/d.py:1 long ({MAX_FUNCTION_LINES + 2} lines)"]
    (pkg / "b.py").write_text("B = 2\n")
    assert find_cycle(top_level_graph(pkg)) is None
