"""``export``: the adapter merged into its base, for serving without rag_pipeline.

Setup -> run -> print. :func:`run` loads the base generator with the adapter folded into its
weights (``generator.load_generator(merge=True)``, the same merge ``ask`` answers with) and writes:

* ``--format merged``: a plain Hugging Face model folder (safetensors weights, config,
  generation config, tokenizer with its chat template) that ``transformers`` and vLLM load;
* ``--format gguf``: one GGUF file (``--gguf-type f16`` or ``q8_0``) for llama.cpp and Ollama,
  written by :mod:`rag_pipeline.export.gguf`.

Either way the folder also holds ``README.md`` (how to prompt and serve it), ``rag_prompt.json``
(the prompt template the adapter was trained with: the retriever's passages go in the user
message) and ``export.json`` (what made it: adapter, base and its weights hash, settings, file
hashes, library versions). Every file gets the umask's normal mode (0o644 with the usual 022).
The folder is built beside the target and renamed into place; an existing target is replaced
only when an earlier export wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag_pipeline.adapter_meta import read_adapter_meta
from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, write_json
from rag_pipeline.config import opt, to_dict
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.export.gguf import write_gguf
from rag_pipeline.generator import load_generator
from rag_pipeline.model_paths import weights_hash
from rag_pipeline.prompt import adapter_template

log = logging.getLogger(__name__)

MANIFEST = "export.json"
KIND = "rag-export"
# The only directory export may replace: an earlier export, recognised by its manifest.
ARTIFACT = Artifact("an export", MANIFEST, KIND, flag="--output")


@dataclass
class ExportConfig:
    """Settings of ``export`` (defaults < ``--config`` YAML < flags)."""

    adapter: str = opt("", "train-generator output directory to export (LoRA adapter or full fine-tune)")
    output: str = opt("", "folder to write; an existing folder is replaced only when an earlier export wrote it")
    format: Literal["merged", "gguf"] = opt("merged", "merged: Hugging Face folder (transformers, vLLM); gguf: one GGUF file (llama.cpp, Ollama)")
    gguf_type: Literal["f16", "q8_0"] = opt("f16", "GGUF weights: f16 (half of fp32's size) or q8_0 (8-bit blocks of 32, about half of f16's)")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "merged format: weight dtype written (float32: exactly what ask computes with in fp32)")
    base_model: str = opt("", "base model; empty: the one recorded in the adapter")
    name: str = opt("", "model name written into the export; empty: the adapter folder's name")

    def __post_init__(self) -> None:
        if not self.adapter:
            raise ConfigError("adapter is empty: pass --adapter DIR (a train-generator output, e.g. adapters/smollm2-disfl-qa)")
        if not self.output:
            raise ConfigError("output is empty: pass --output DIR, a new folder for the exported model")


def check_target(output: Path, adapter: Path) -> None:
    """Refuse to write over anything an earlier export did not write (``run`` refuses the adapter itself first)."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file: pass a folder path")
    if not output.is_dir() or not any(output.iterdir()):
        return
    manifest = output / MANIFEST
    try:
        written = json.loads(manifest.read_text(encoding="utf-8"))
        ours = written.get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise InputError(f"--output {output} already holds files that no export wrote (no {MANIFEST}): "
                         "pass a new folder, or empty this one yourself")
    files = written.get("files")
    theirs = sorted(p.name for p in output.iterdir() if p.name != MANIFEST and not (isinstance(files, dict) and p.name in files))
    if theirs:  # a Modelfile beside the GGUF, notes: replacing the export would delete them with it
        raise InputError(f"--output {output} holds {', '.join(theirs[:5])}{' ...' if len(theirs) > 5 else ''}, which the earlier "
                         "export did not write: move them out, or pass a new folder")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("rag-pipeline", "torch", "transformers", "peft", "gguf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_merged(model: Any, tokenizer: Any, folder: Path, dtype: str) -> None:
    """A Hugging Face model folder: weights (safetensors), config, generation config, tokenizer + chat template."""
    import torch

    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype])
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def same_mode(folder: Path, like: Path) -> None:
    """Give every file in ``folder`` the mode of ``like``, a file created there with the umask's normal mode
    (0o644 with the usual 022): transformers writes ``model.safetensors`` 0o600, its other files 0o644.

    The umask is read off a file rather than with ``os.umask``, which can only read it by changing it
    for every thread of the process."""
    mode = stat.S_IMODE(like.stat().st_mode)
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != mode:
            p.chmod(mode)


def readme(name: str, folder: str, fmt: str, files: list[str], meta: dict[str, Any], template: Any) -> str:
    """The export's README: what it is, how to prompt it, how to serve it."""
    model_ref = f"{folder}/{files[0]}" if fmt == "gguf" else folder
    lines = [
        f"# {name}", "",
        f"`{meta.get('base_model')}` with the RAFT-tuned adapter `{meta.get('adapter')}` merged into its weights, "
        f"exported by `rag-pipeline export --format {fmt}`" + (f" ({meta.get('gguf_type')})" if fmt == "gguf" else "") + ".",
        "It answers a question from numbered passages, citing them as `[n]`, and abstains with "
        "\"The documents don't contain the answer.\" when they do not hold the answer.", "",
        "## Prompt", "",
        f"Trained with the prompt template `{template.name}` (also in `rag_prompt.json`): a system message, then a user "
        "message holding the retrieved passages and the question, through the tokenizer's chat template:", "",
        "```text", f"system: {template.system}", "",
        "user: <documents>", "[1] Title of passage 1", "text of passage 1", "", "[2] Title of passage 2", "text of passage 2",
        "</documents>", "", "Question: the question", "```", "",
        "Retrieve the passages with the project's index (`rag-pipeline search --json`, or `POST /v1/search` on "
        "`rag-pipeline serve`); 2 passages, as in training.", "",
        "## Serve", "",
    ]
    if fmt == "gguf":
        lines += ["```sh", f"llama-server -m {model_ref} --port 8080        # llama.cpp, OpenAI-compatible API",
                  f"# Ollama: a Modelfile with the line  FROM ./{files[0]}", "```", "",
                  "In Python: `AutoModelForCausalLM.from_pretrained(DIR, gguf_file=...)` (dequantized on load)."]
    else:
        lines += ["```sh", f"vllm serve {model_ref} --port 8080             # vLLM, OpenAI-compatible API", "```", "",
                  "In Python: `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`; "
                  "no rag_pipeline code is needed."]
    lines += ["", "`export.json` records the adapter, the base model and its weights hash, the settings and the file hashes.", ""]
    return "\n".join(lines)


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Write the export; returns its manifest.

    Raises:
        InputError: the adapter folder is not a finished train-generator output, its config or
            weights are damaged, or the target holds files no export wrote.
        ConfigError: GGUF asked for a model or tokenizer it cannot describe, or the folder of
            ``--output`` cannot be written (checked before the models load).
    """
    adapter, output = Path(cfg.adapter), Path(cfg.output)
    if not adapter.is_dir():
        raise InputError(f"adapter folder {adapter} does not exist: pass a train-generator output (e.g. adapters/smollm2-disfl-qa)")
    meta = read_adapter_meta(adapter)
    check_separate([adapter], output)  # the adapter itself, or an export inside it (hashed as the adapter's weights)
    check_target(output, adapter)
    name = cfg.name or adapter.resolve().name
    template = adapter_template(meta, f"adapter {adapter}")  # the template it was trained with, as ask renders it
    with atomic_dir(output, ARTIFACT) as tmp:  # made before the models load: an unwritable --output fails at once
        model, tokenizer, kind = load_generator(cfg.base_model or None, adapter, device="cpu", dtype="float32", merge=True)
        if cfg.format == "gguf" and kind != "causal":
            raise ConfigError(f"GGUF export writes causal (Llama) models; {meta.base_model} is {kind}: use --format merged")
        if cfg.format == "merged":
            write_merged(model, tokenizer, tmp, cfg.dtype)
            details: dict[str, Any] = {"dtype": cfg.dtype}
        else:
            details = write_gguf(model, tokenizer, tmp / f"{name}.{cfg.gguf_type}.gguf", cfg.gguf_type, name)
        weights = sorted(p.name for p in tmp.iterdir())
        write_json(tmp / "rag_prompt.json", dataclasses.asdict(template))
        manifest = {
            "kind": KIND, "format": cfg.format, "name": name, "config": to_dict(cfg), **details,
            "adapter": str(adapter), "adapter_weights_sha256": weights_hash(adapter), "base_model": meta.base_model,
            "base_weights_hash": meta.base_weights_hash, "template": template.name, "versions": _versions(),
        }
        (tmp / "README.md").write_text(readme(name, cfg.output, cfg.format, weights, {**manifest, "gguf_type": cfg.gguf_type}, template), encoding="utf-8")
        same_mode(tmp, like=tmp / "README.md")
        manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        write_json(tmp / MANIFEST, manifest)
    log.info("exported %s (%s) to %s", name, cfg.format, output)
    return manifest


def main(cfg: ExportConfig) -> int:
    """``rag-pipeline export``: write the export and print its files."""
    m = run(cfg)
    kind = f"gguf {m['gguf_type']}" if m["format"] == "gguf" else f"merged Hugging Face folder ({m['dtype']})"
    print(f"exported {m['adapter']} merged into {m['base_model']} as a {kind} -> {cfg.output}")
    for name, f in m["files"].items():
        print(f"  {name:<28} {f['bytes'] / 2**20:9.1f} MiB")
    print(f"serve it: see {Path(cfg.output) / 'README.md'}", file=sys.stderr)
    return 0
