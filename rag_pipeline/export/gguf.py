"""Write a Llama-architecture causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama).

The same file llama.cpp's ``convert_hf_to_gguf.py`` writes for a ``LlamaForCausalLM`` with a
byte-level BPE tokenizer (SmolLM2's case), with the ``gguf`` package's ``GGUFWriter``:

* hyperparameters under ``llama.*`` (block count, context and embedding length, heads, KV
  heads, RoPE base and dimension, RMS-norm epsilon, vocabulary size) and the file type;
* the tokenizer as ``tokenizer.ggml.*``: model ``gpt2``, the pre-tokenizer name llama.cpp
  knows for this split (``gpt-2`` or ``smollm``), every token with its type (normal, control
  for special added tokens, user-defined for other added ones), the merges, the special token
  ids, whether BOS/EOS are added, and the chat template;
* the tensors under llama.cpp's names; ``q_proj``/``k_proj`` weights permuted as llama.cpp
  expects for its RoPE layout (the inverse of what its loaders undo); norms in F32, matrices
  in F16 or Q8_0 (blocks of 32; a matrix whose rows are not a multiple of 32 stays F16); no
  ``output.weight`` when the embeddings are tied.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

GgufType = Literal["f16", "q8_0"]


def _gpt2_split(pre: dict) -> bool:
    return pre.get("type") == "ByteLevel" and bool(pre.get("use_regex", True))


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization; ConfigError for one it would split differently."""
    pre = tok_json.get("pre_tokenizer") or {}
    if _gpt2_split(pre):
        return "gpt-2"  # GPT-2's regex split, then bytes
    parts = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Digits"
            and parts[0].get("individual_digits") and _gpt2_split(parts[1])):
        return "smollm"  # digits one by one, then GPT-2's split (SmolLM's own tokenizer.json)
    raise ConfigError(
        f"GGUF export supports byte-level BPE tokenizers split like GPT-2 or SmolLM; this one's pre-tokenizer is "
        f"{json.dumps(pre)[:200]}: use --format merged (served by transformers or vLLM) for this model"
    )


def _check_model(config: Any) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"GGUF export writes Llama-architecture models (SmolLM2, Llama); this model is "
                          f"'{getattr(config, 'model_type', None)}': use --format merged")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("GGUF export does not write Llama models with attention or MLP biases: use --format merged")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"GGUF export supports the default RoPE only, not {rope.get('rope_type', rope.get('type'))!r}: use --format merged")


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def write_hparams(writer: Any, config: Any, name: str, file_type: int) -> None:
    """The ``general.*`` and ``llama.*`` keys, as convert_hf_to_gguf.py writes them for LlamaForCausalLM."""
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_vocab(writer: Any, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` keys and the chat template; returns what was written (for the manifest)."""
    import gguf

    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tok_json.get("model", {}).get("type") != "BPE":
        raise ConfigError(f"GGUF export supports BPE tokenizers; this one is {tok_json.get('model', {}).get('type')}: use --format merged")
    pre = _pre_tokenizer_name(tok_json)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise ConfigError(f"the tokenizer has token id {max(reverse)} but the model's vocab_size is {vocab_size}: they do not belong together")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    specials = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("unk", writer.add_unk_token_id),
                      ("pad", writer.add_pad_token_id)):
        if specials[kind] is not None:
            add(specials[kind])
    probe = tokenizer("a b")["input_ids"]  # what the tokenizer adds around plain text
    add_bos = specials["bos"] is not None and probe[0] == specials["bos"]
    add_eos = specials["eos"] is not None and probe[-1] == specials["eos"]
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    byte_level = tok_json.get("pre_tokenizer") or {}
    if byte_level.get("type") == "Sequence":
        byte_level = byte_level["pretokenizers"][-1]
    writer.add_add_space_prefix(bool(byte_level.get("add_prefix_space", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    return {"pre_tokenizer": pre, "tokens": len(tokens), "merges": len(merges), "special_ids": specials,
            "add_bos": add_bos, "add_eos": add_eos, "chat_template": isinstance(getattr(tokenizer, "chat_template", None), str)}


def permute_for_llama_cpp(w: Any, n_head: int) -> Any:
    """Reorder each head's rows from HF's rotate-half RoPE layout to llama.cpp's interleaved one.

    ``w``: ``(n_head * head_dim, hidden)``; pass the KV head count for ``k_proj``.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tensors(writer: Any, model: Any, gguf_type: GgufType) -> dict[str, int]:
    """Every weight under its llama.cpp name; returns the count of tensors per GGML type."""
    import gguf
    import torch

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    counts: dict[str, int] = {}
    for name, tensor in model.state_dict().items():
        if (tied and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConfigError(f"no GGUF name for tensor {name!r}: this Llama variant is not supported, use --format merged")
        w = tensor.detach().to(torch.float32)
        if name.endswith("q_proj.weight"):
            w = permute_for_llama_cpp(w, heads)
        elif name.endswith("k_proj.weight"):
            w = permute_for_llama_cpp(w, kv_heads)
        data = w.numpy()
        if data.ndim == 1 or new_name.endswith("_norm.weight"):
            qtype, out = gguf.GGMLQuantizationType.F32, data.astype(np.float32)
        elif gguf_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            out = gguf.quants.quantize(data, qtype)
        else:
            qtype, out = gguf.GGMLQuantizationType.F16, data.astype(np.float16)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(new_name, out)
        else:
            writer.add_tensor(new_name, out, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts


def write_gguf(model: Any, tokenizer: Any, path: str | Path, gguf_type: GgufType, name: str) -> dict[str, Any]:
    """Write ``model`` (merged weights) and ``tokenizer`` to the GGUF file ``path``.

    A failure leaves no file at ``path``: a truncated GGUF would load in llama.cpp as garbage
    or fail there with a far less useful message.

    Raises:
        ConfigError: not a Llama-architecture model, or a tokenizer llama.cpp would split differently.
    """
    import gguf

    if gguf_type not in ("f16", "q8_0"):
        raise ConfigError(f"gguf_type is {gguf_type!r}: choose f16 or q8_0")
    _check_model(model.config)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        write_hparams(writer, model.config, name, int(file_type))
        vocab = write_vocab(writer, tokenizer, model.config.vocab_size)
        counts = write_tensors(writer, model, gguf_type)
        writer.write_header_to_file()  # the file is created here
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        path.unlink(missing_ok=True)
        raise
    writer.close()
    return {"gguf_type": gguf_type, "tensor_types": counts, "tokenizer": vocab, "architecture": "llama"}
