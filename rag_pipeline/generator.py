"""The generator, shared by ``train-generator``, ``ask`` and evaluation.

* :func:`load_model` is the one model loader (the Auto class chosen by the config's kind), used by
  :func:`load_generator`, ``train-generator`` and the ``hf:`` teacher.
* :func:`load_generator` loads a causal or seq2seq model for generation, optionally with a
  trained adapter directory whose recorded base model is checked against the one given.
* :func:`encode_example` turns (model text, completion) into ``input_ids``/``labels`` with the
  prompt masked (-100); an over-long prompt is cut in the middle (the documents), never the target.
* :func:`collate` pads a training batch dynamically (to its longest member, never a fixed maximum)
  with :func:`pad`, which :func:`generate_answers` uses too.
* :func:`generate_answers` decodes a list of model texts in batches (left padding for causal models).

Devices and dtypes come from :mod:`rag_pipeline.device`; an adapter directory's ``rag_pipeline.json``
from :mod:`rag_pipeline.adapter_meta`.

torch and transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag_pipeline.adapter_meta import AdapterMeta, read_adapter_meta
from rag_pipeline.device import resolve_device, torch_dtype
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.metrics import is_abstention
from rag_pipeline.model_paths import resolve_model, weights_hash

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Kind = Literal["causal", "seq2seq"]

# LoRA targets per architecture (config.model_type): the attention projections.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj"] for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "smollm3")},
    **{t: ["q", "k", "v", "o"] for t in ("t5", "mt5", "umt5")},
    **{t: ["q_proj", "k_proj", "v_proj", "out_proj"] for t in ("bart", "mbart", "marian", "pegasus")},
}


def default_target_modules(model_type: str) -> list[str]:
    """The LoRA target modules for an architecture; an unknown one names the flag to set."""
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ConfigError(
            f"no default LoRA target modules for model type '{model_type}' (known: "
            f"{', '.join(sorted(DEFAULT_TARGET_MODULES))}): pass --lora-target-modules, e.g. q_proj,v_proj"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def model_kind(config: Any) -> Kind:
    """``seq2seq`` for encoder-decoder configs, else ``causal``."""
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def check_adapter_files(adapter_dir: str | Path, meta: AdapterMeta) -> None:
    """Fail unless the adapter's config and safetensors weights can be read: cheap (JSON and the
    safetensors headers, whose offsets must cover each file exactly), so a truncated, empty or
    half-copied adapter is one error line before any model loads, not a loader's traceback.

    Raises:
        InputError: naming the damaged file, what is wrong with it, and the fix.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(adapter_dir)
    fix = "the adapter directory is damaged (an interrupted copy or training run?): retrain it with train-generator or restore it from a copy"
    config = folder / ("config.json" if meta.method == "full" else "adapter_config.json")
    if not config.is_file():
        raise InputError(f"{folder} has no {config.name}: {fix}")
    try:
        obj = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config} is not valid JSON ({e}): {fix}") from None
    needed = "model_type" if meta.method == "full" else "peft_type"
    if not isinstance(obj, dict) or needed not in obj:
        raise InputError(f"{config} is not a {'model' if needed == 'model_type' else 'peft adapter'} config (no '{needed}'): {fix}")
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="np"):
                pass
        except SafetensorError as e:
            raise InputError(f"{weights} is not a complete safetensors file ({e}; {weights.stat().st_size} bytes): {fix}") from None


def check_adapter_base(meta: AdapterMeta, base_id: str, base_dir: Path, adapter_dir: str | Path) -> None:
    """Raise ConfigError when the base model given is not the one the adapter was trained on."""
    recorded = meta.base_weights_hash
    actual = weights_hash(base_dir)
    if recorded and recorded != actual:
        raise ConfigError(
            f"adapter {adapter_dir} was trained on base model '{meta.base_model}' (weights sha256 "
            f"{recorded[:12]}) but the base given, '{base_id}', has weights sha256 {actual[:12]}: "
            f"pass --base-model {meta.base_model} or the adapter trained on this base"
        )


def load_tokenizer(path: str | Path, kind: Kind | None, trust_remote_code: bool = False, require_fast: str | None = None) -> Any:
    """The one tokenizer loader: a tokenizer with a pad token; causal models pad on the left
    (generation needs it), ``kind`` None leaves the padding side as saved.

    Args:
        require_fast: why a fast tokenizer (a ``tokenizer.json``) is needed, for the error when
            it is not one; None accepts any.

    Raises:
        InputError: neither a pad nor an eos token.
        ConfigError: not a fast tokenizer, and ``require_fast`` asks for one.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if require_fast and not getattr(tok, "is_fast", False):
        raise ConfigError(f"the tokenizer at {path} is not a fast tokenizer (no tokenizer.json): {require_fast}")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InputError(f"tokenizer at {path} has neither a pad nor an eos token: add one and save it")
        tok.pad_token = tok.eos_token
    if kind == "causal":
        tok.padding_side = "left"
    return tok


def load_model(weights_dir: str | Path, dtype: str | None = "float32", trust_remote_code: bool = False, **kwargs: Any) -> tuple[Any, Kind]:
    """The one model loader: read the config, pick the Auto class by kind, load the weights.

    Args:
        weights_dir: a local model directory (see :func:`rag_pipeline.model_paths.resolve_model`).
        dtype: float32, bfloat16 or float16 weights; None keeps the checkpoint's own dtype.
        kwargs: more ``from_pretrained`` arguments (QLoRA's ``quantization_config`` and ``device_map``).

    Returns:
        (model, kind); the model's ``config.model_type`` names its architecture.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(str(weights_dir), trust_remote_code=trust_remote_code)
    kind = model_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    weights_dtype = "auto" if dtype is None else torch_dtype(dtype)  # transformers' "auto": the checkpoint's dtype
    model = auto.from_pretrained(str(weights_dir), dtype=weights_dtype, trust_remote_code=trust_remote_code, **kwargs)
    return model, kind


def load_generator(
    model_id_or_path: str | None,
    adapter_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    merge: bool = False,
) -> tuple[Any, Any, Kind]:
    """Load (model, tokenizer, kind) for generation or training, in eval mode, on ``device``.

    Args:
        model_id_or_path: base model (Hub id with a packaged/cached copy, or a directory); None
            takes the base recorded in ``adapter_dir``.
        adapter_dir: a train-generator output: a LoRA adapter (loaded with peft) or, for
            ``method: full``, a full model. Its tokenizer is used.
        device: auto, cpu or cuda.
        dtype: float32, bfloat16 or float16 weights; None keeps the checkpoint's own dtype.
        trust_remote_code: allow model code from the model directory (off by default).
        merge: fold a LoRA adapter into the base weights (inference only: no per-layer adapter
            matmuls at every decoded token; the model is then a plain transformers model).

    Raises:
        DeviceError: CUDA asked for and absent.
        ConfigError: the adapter was trained on a different base model.
        InputError: adapter_dir is not a finished train-generator output, or its config or
            weights are damaged (:func:`check_adapter_files`).
    """
    dev = resolve_device(device)
    meta = read_adapter_meta(adapter_dir) if adapter_dir is not None else None
    if model_id_or_path is None:
        if meta is None:
            raise ConfigError("no model given: pass a base model id or path, or an adapter directory")
        model_id_or_path = meta.base_model
    base_dir = resolve_model(model_id_or_path)
    if meta is not None:
        check_adapter_base(meta, str(model_id_or_path), base_dir, adapter_dir)
        check_adapter_files(adapter_dir, meta)
    full = meta is not None and meta.method == "full"
    model, kind = load_model(Path(adapter_dir) if full else base_dir, dtype, trust_remote_code)
    if adapter_dir is not None and not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if merge:
            model = model.merge_and_unload()
    tok_dir = adapter_dir if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_dir
    tokenizer = load_tokenizer(tok_dir, kind, trust_remote_code)
    model.to(dev).eval()
    return model, tokenizer, kind


def _adds_special(tokenizer: Any, kind: Kind) -> bool:
    """Whether a prompt's encoding adds the tokenizer's special tokens: always for seq2seq; for a causal model, text
    rendered by a chat template already holds its special tokens, plain text gets BOS/EOS."""
    return kind == "seq2seq" or not getattr(tokenizer, "chat_template", None)


def cut_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the first quarter and the rest from the end of ``ids`` within ``budget`` tokens.

    The head keeps the system message, the tail the question and the generation prompt; the
    documents in the middle are what gets cut.
    """
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head):]


def encode_prompt(tokenizer: Any, kind: Kind, model_text: str) -> list[int]:
    """Token ids of the model text as the model sees it (no truncation)."""
    return tokenizer(model_text, add_special_tokens=_adds_special(tokenizer, kind))["input_ids"]


def encode_prompt_from(tokenizer: Any, kind: Kind, model_text: str, start: int) -> tuple[list[int], int]:
    """:func:`encode_prompt`'s ids of ``model_text``, and how many of them run from the one holding character ``start``
    to the end (at least 1).

    Raises:
        InputError: the tokenizer gives no character offsets (not a fast one).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("the question's place in the prompt needs a fast tokenizer (character offsets): this one is not")
    enc = tokenizer(model_text, add_special_tokens=_adds_special(tokenizer, kind), return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    first = next((i for i, (_, end) in enumerate(offsets) if end > start), len(offsets) - 1)
    return enc["input_ids"], max(len(offsets) - first, 1)


def encode_target(tokenizer: Any, completion: str) -> list[int]:
    """Token ids of the completion followed by exactly one EOS."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def encode_example(tokenizer: Any, kind: Kind, model_text: str, completion: str, max_length: int) -> dict[str, Any]:
    """Encode one training example.

    Causal: ``input_ids`` = prompt + completion + EOS, ``labels`` = -100 over the prompt.
    Seq2seq: ``input_ids`` = the encoder's prompt, ``labels`` = completion + EOS.

    Returns:
        dict with ``input_ids``, ``labels`` (lists of int) and ``prompt_cut`` (prompt tokens removed
        to fit ``max_length``; 0 when it fit).

    Raises:
        InputError: the completion alone leaves no room for the prompt within ``max_length``.
    """
    prompt = encode_prompt(tokenizer, kind, model_text)
    target = encode_target(tokenizer, completion)
    budget = max_length if kind == "seq2seq" else max_length - len(target)
    min_prompt = 16  # below this the prompt has lost its question as well as its documents
    if len(target) > max_length or budget < min_prompt:
        raise InputError(
            f"a completion is {len(target)} tokens, which leaves no room for the prompt within max_length "
            f"{max_length}: raise --max-length (or shorten the completions in the dataset)"
        )
    cut = max(0, len(prompt) - budget)
    prompt = cut_middle(prompt, budget)
    if kind == "seq2seq":
        return {"input_ids": prompt, "labels": target, "prompt_cut": cut}
    return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target, "prompt_cut": cut}


def collate(examples: list[dict[str, Any]], pad_id: int, kind: Kind) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member.

    Causal batches are padded on the left so every row's completion ends at the last position
    (the loss then needs logits only for the last few positions) and ``position_ids`` count real
    tokens only. Seq2seq pads inputs and labels on the right.
    """
    ids = [e["input_ids"] for e in examples]
    labels = [e["labels"] for e in examples]
    if kind == "causal":
        input_ids, mask = pad(ids, pad_id, "left")
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": pad(labels, -100, "left")[0], "position_ids": position_ids}
    input_ids, mask = pad(ids, pad_id, "right")
    return {"input_ids": input_ids, "attention_mask": mask, "labels": pad(labels, -100, "right")[0]}


def pad(rows: list[list[int]], value: int, side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token rows to the longest one; the one padding routine for training and generation.

    Causal models are padded on the left (every row's continuation then starts at the same
    position), seq2seq inputs and labels on the right.

    Returns:
        (padded rows, mask of the real tokens), both long tensors of shape (rows, longest row).
    """
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        out[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return out, mask


@functools.cache
def cache_name() -> str:
    """What ``generate``, a model's forward and their outputs call the key/value cache: ``cache`` since transformers
    renamed it (5.x: ``past_key_values`` still works, with a deprecation warning, until 5.40), ``past_key_values`` before."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


def static_cache(model: Any, length: int) -> Any | None:
    """A preallocated key/value cache of ``length`` positions for one causal ``generate`` call, or None where
    transformers' own choice stays: a model whose generation config names its cache (Gemma-2's hybrid one), or one
    with sliding-window layers (cropping the prompt's cache back, as the null margin does, assumes full attention).

    Decoding into it instead of transformers' default (a cache grown by concatenation, attended
    without a mask at batch size 1) takes about 17% less time per token on a 2-core CPU
    (``bench/bench_decode.py``). The attention then always runs with a mask over the preallocated
    length, which changes bf16 logits in their last bits, so a near tie can decode the other way:
    on the whole Disfl-QA test split 31 of 813 answers differed, and the figures stayed inside
    their noise (``docs/results.md``, "The fast kernels on the whole test split"). On a GPU
    transformers would compile the model for it, once per cache length: ``ask`` uses it on CPUs only.
    """
    from transformers import StaticCache

    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return None
    cache = StaticCache(config=model.config, max_cache_len=length)
    return None if any(getattr(layer, "is_sliding", False) for layer in cache.layers) else cache


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward (under any DDP or peft wrapper) takes the argument ``name``."""
    import inspect

    base = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return name in inspect.signature(base.forward).parameters


def batch_loss(model: Any, batch: dict[str, torch.Tensor], kind: Kind) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy over the labelled positions, and their count.

    For causal models only the positions that predict a completion token get logits
    (``logits_to_keep``): the vocabulary projection over the whole prompt is most of the
    memory and a fifth of the compute for a small model, and carries no loss. A batch with a 4D
    attention mask holds packed units (:mod:`rag_pipeline.packing`): logits only at the positions
    a label follows.

    Returns:
        (sum of losses as a scalar tensor, number of target tokens)
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    n_tokens = int((labels != -100).sum())
    if kind == "seq2seq":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        logits = out.logits.float()  # (batch, target_len, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")
        return loss, n_tokens
    if batch["attention_mask"].dim() == 4:  # packed units (rag_pipeline.packing): logits only where a label follows
        need = (labels[:, 1:] != -100).any(0).nonzero().flatten()
        kwargs = {"logits_to_keep": need} if accepts(model, "logits_to_keep") else {}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], **kwargs)
        logits = (out.logits if kwargs else out.logits[:, need]).float()  # (batch, len(need), vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, need + 1].reshape(-1), ignore_index=-100, reduction="sum")
        return loss, n_tokens
    width = labels.size(1)
    labelled = (labels != -100).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else width - 1
    keep = width - first + 1  # logits at positions first-1 .. width-1 predict tokens first .. width
    kwargs: dict[str, Any] = {}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], **kwargs)
    logits = out.logits[:, -keep:].float()  # (batch, keep, vocab)
    shift_logits = logits[:, :-1]
    shift_labels = labels[:, width - keep + 1:]
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, n_tokens


@dataclass
class DecodeCounts:
    """What answering one model text cost, in tokens (``serve`` reports it as ``usage``)."""

    prompt_tokens: int = 0  # prompt tokens read, once per decoding pass (a retried refusal reads it again)
    completion_tokens: int = 0  # tokens decoded over all passes, each pass's EOS included
    stopped: bool = True  # the decode kept ended with EOS (False: it ran into max_new_tokens)

    def add(self, prompt: int, decoded: list[int], eos_id: int) -> None:
        """Count one decoding pass: its prompt length and its tokens up to (and with) the first EOS."""
        n = decoded.index(eos_id) + 1 if eos_id in decoded else len(decoded)
        self.prompt_tokens += prompt
        self.completion_tokens += n
        self.stopped = eos_id in decoded


class _BatchStreamer:
    """A transformers streamer for a whole batch: ``put`` gets the prompt once, then the ``(batch,)`` ids of each step.

    Hands ``on_token(text index, token id)`` every decoded token of every row up to its EOS (EOS and
    the padding after it are not handed on).
    """

    def __init__(self, rows: list[int], on_token: Callable[[int, int], None], eos_id: int) -> None:
        self.rows, self.on_token, self.eos_id = rows, on_token, eos_id
        self.prompt_seen = False
        self.ended = [False] * len(rows)

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the prompt (causal) or the decoder start ids (seq2seq)
            self.prompt_seen = True
            return
        for r, token in enumerate(value.reshape(len(self.rows), -1)[:, -1].tolist()):
            if self.ended[r]:
                continue
            if token == self.eos_id:
                self.ended[r] = True
                continue
            self.on_token(self.rows[r], int(token))

    def end(self) -> None:
        pass


def generate_answers(
    model: Any,
    tokenizer: Any,
    kind: Kind,
    model_texts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_input_length: int | None = None,
    autocast_bf16: bool = False,
    constraints: list[Any] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    counts: list[DecodeCounts] | None = None,
    static: bool = False,
    engine: Any = None,
) -> list[str]:
    """Generate one answer per model text, in input order.

    Greedy by default; ``num_beams > 1`` for beam search, ``do_sample`` for sampling (seeded).
    Texts are batched by length (less padding); causal batches are left-padded so every row's
    generation starts at the same position. Prompts longer than ``max_input_length`` are cut
    in the middle like training prompts. ``constraints`` (one per text, e.g.
    :class:`rag_pipeline.answer.grounded.GroundedConstraint`) restrict each answer's tokens.

    Args:
        on_token: called as ``on_token(text index, token id)`` with each token as it is decoded
            (EOS excluded); not with beam search, which settles its tokens only at the end.
        counts: one :class:`DecodeCounts` per text, filled in (prompt and decoded tokens).
        static: a causal model decodes into a preallocated cache (:func:`static_cache`; not with
            beam search; ``ask --kernels fast`` on a CPU); False keeps transformers' default cache.
        engine: a :class:`rag_pipeline.batching.DecodeEngine` (``serve``): a causal model's greedy or sampled rows
            join its running batch (sampled rows get seeds drawn from ``seed`` in input order); beam search and
            seq2seq models decode here, holding its lock.

    Returns:
        The decoded continuations (prompt excluded, special tokens skipped), stripped.
    """
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded = [encode_prompt(tokenizer, kind, t) for t in model_texts]
    if max_input_length is not None:
        encoded = [cut_middle(ids, max_input_length) for ids in encoded]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if engine is not None and kind == "causal" and num_beams == 1 and not autocast_bf16:
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in encoded]
        specs = [RowSpec(ids, max_new_tokens, tokenizer.eos_token_id, constraint=constraints[i] if constraints else None,
                         sample=(temperature, top_p, seeds[i]) if do_sample else None,
                         on_token=functools.partial(on_token, i) if on_token is not None else None)
                 for i, ids in enumerate(encoded)]
        return _decoded(tokenizer, encoded, engine.run(specs), counts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    # sampling seeds torch's global generator per batch (what generate draws from), inside a fork: the caller's stream is restored
    forked = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [], enabled=do_sample)
    with engine.lock if engine is not None else contextlib.nullcontext(), forked:  # a beam search or seq2seq model never runs beside a step
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = pad([encoded[i] for i in idx], pad_id, "left" if kind == "causal" else "right")
            width = ids.size(1)
            if do_sample:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs = _constraint_kwargs([constraints[i] for i in idx], width if kind == "causal" else 1, num_beams,
                                        len(tokenizer)) if constraints else {}
            if on_token is not None and num_beams == 1:
                kwargs["streamer"] = _BatchStreamer(idx, on_token, tokenizer.eos_token_id)
            cache = static_cache(model, width + max_new_tokens) if static and kind == "causal" and num_beams == 1 else None
            if cache is not None:
                kwargs[cache_name()] = cache
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                result = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                    num_beams=num_beams, do_sample=do_sample, temperature=temperature if do_sample else None,
                    top_p=top_p if do_sample else None, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **kwargs,
                )
            new = result[:, width:] if kind == "causal" else result
            for r, i in enumerate(idx):
                out[i] = tokenizer.decode(new[r], skip_special_tokens=True).strip()
                if counts is not None:  # seq2seq rows start with the decoder start token, not a decoded one
                    counts[i].add(len(encoded[i]), new[r, 0 if kind == "causal" else 1:].tolist(), tokenizer.eos_token_id)
    model.train(was_training)
    return out


def generate_with_margins(
    model: Any, tokenizer: Any, kind: Kind, model_texts: list[str], abstain_text: str,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_input_length: int | None = None,
    constraints: list[Any] | None = None,
    is_refusal: Callable[[str], bool] | None = None,
    max_refusal_retries: int = 3,
    counts: list[DecodeCounts] | None = None,
    ban_first_word: bool = False,
    static: bool = False,
    engine: Any = None,
    openings: bool = True,
    opening: Callable[[list[int]], list[int]] | None = None,
) -> list[tuple[str, float]]:
    """Greedy answers with the abstention sentence banned, each with its null margin.

    The margin is ``log P(abstain_text + EOS) - log P(answer + EOS)`` under the prompt (sums of token log-probabilities,
    the answer's as generated): the score a calibrated threshold compares (:mod:`rag_pipeline.eval.calibrate`). For
    causal models the abstention is scored on the prompt's key/value cache left by generation (about ten extra tokens).

    The answer is the best *answering* continuation: :data:`ABSTAIN_OPENINGS` are banned up front (``openings``), and
    a row whose answer is still a refusal (``is_refusal``, default :func:`rag_pipeline.metrics.is_abstention`) is
    decoded again with its opening (``opening(token ids)``, default the first two) banned too, up to
    ``max_refusal_retries`` times; a JSON answer's abstention is its null object, with nothing banned up front. With
    ``ban_first_word`` the abstention's first token ("The") cannot open the answer (:class:`BanAtStart`). ``counts``
    (one :class:`DecodeCounts` per text) get every pass's tokens. ``static``: a preallocated cache (:func:`static_cache`).
    ``engine``: the rows join a :class:`rag_pipeline.batching.DecodeEngine`'s running batch.

    Returns:
        (answer text, margin) per model text, in input order.
    """
    import torch
    from transformers import LogitsProcessorList

    is_refusal = is_abstention if is_refusal is None else is_refusal
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    abstain = tokenizer(abstain_text, add_special_tokens=False)["input_ids"] + [eos_id]
    banned = abstain_openings(tokenizer, abstain[:2]) if openings else []
    opening = opening or (lambda ids: ids[:2])
    encoded = [encode_prompt(tokenizer, kind, t) for t in model_texts]
    if max_input_length is not None:
        encoded = [cut_middle(ids, max_input_length) for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    if engine is not None and kind == "causal":
        return _margins_on(engine, tokenizer, encoded, abstain, banned, constraints, abstain[:1] if ban_first_word else [],
                           max_new_tokens, is_refusal, max_refusal_retries, counts, opening)
    out: list[tuple[str, float]] = [("", 0.0)] * len(encoded)

    def greedy(idx: list[int], bad: list[list[int]]) -> tuple[Any, Any, list[tuple[str, list[int]]], Any, Any, Any]:
        """One greedy pass over rows ``idx``: (ids, mask, (text, token ids) per row, answer log-probs, generate's result, first-step log-probs)."""
        ids, mask = pad([encoded[i] for i in idx], pad_id, "left" if kind == "causal" else "right")
        ids, mask = ids.to(device), mask.to(device)
        start = ids.shape[1] if kind == "causal" else 1
        kwargs = _constraint_kwargs([constraints[i] for i in idx], start, 1, len(tokenizer)) if constraints else {}
        kwargs["logits_processor"] = LogitsProcessorList(kwargs.get("logits_processor", []) + ([BanAtStart(start, abstain[:1])] if ban_first_word else []))
        # room for the answer, or for the abstention scored on the prompt's cache after it
        cache = static_cache(model, start + max(max_new_tokens, len(abstain))) if static and kind == "causal" else None
        if cache is not None:
            kwargs[cache_name()] = cache
        res = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             bad_words_ids=bad or None, pad_token_id=pad_id, eos_token_id=eos_id,
                             return_dict_in_generate=True, output_logits=True, **kwargs)
        logits = torch.stack(res.logits, 1).float().log_softmax(-1)  # (batch, steps, vocab), before the ban
        new = res.sequences[:, -logits.shape[1]:]
        taken = logits.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # (batch, steps)
        alive = torch.cumprod(torch.cat([torch.ones_like(new[:, :1]), (new[:, :-1] != eos_id).long()], 1), 1)
        toks = [new[r][alive[r].bool()].tolist() for r in range(len(idx))]
        texts = [(tokenizer.decode(t, skip_special_tokens=True).strip(), t) for t in toks]
        if counts is not None:
            for i, t in zip(idx, toks):
                counts[i].add(len(encoded[i]), t, eos_id)
        return ids, mask, texts, (taken * alive).sum(1), res, logits[:, 0]

    was_training = model.training
    model.eval()
    with torch.no_grad(), engine.lock if engine is not None else contextlib.nullcontext():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, texts, answer_lp, res, first = greedy(idx, banned)
            abstain_lp = _abstain_logprob(model, kind, ids, mask, res, first, abstain)
            answers = _retried(greedy, idx, banned, {i: (*texts[r], float(answer_lp[r])) for r, i in enumerate(idx)},
                               is_refusal, max_refusal_retries, opening)
            for r, i in enumerate(idx):
                text, _, lp = answers[i]
                out[i] = (text, float(abstain_lp[r]) - lp)
    model.train(was_training)
    return out


def _decoded(tokenizer: Any, encoded: list[list[int]], done: list[Any], counts: list[DecodeCounts] | None) -> list[str]:
    """The answer texts of an engine's decoded rows (``counts`` filled in)."""
    if counts is not None:
        for c, ids, d in zip(counts, encoded, done):
            c.add(len(ids), d.tokens, tokenizer.eos_token_id)
    return [tokenizer.decode(d.tokens, skip_special_tokens=True).strip() for d in done]


def _margins_on(engine: Any, tokenizer: Any, encoded: list[list[int]], abstain: list[int], banned: list[list[int]],
                constraints: list[Any] | None, ban_first: list[int], max_new_tokens: int, is_refusal: Callable[[str], bool],
                retries: int, counts: list[DecodeCounts] | None, opening: Callable[[list[int]], list[int]]) -> list[tuple[str, float]]:
    """:func:`generate_with_margins` on a decode engine: the same passes (the abstention scored on each prompt as its
    row joins, then the reworded refusals decoded again), each pass's rows in the engine's shared batch."""
    eos_id = tokenizer.eos_token_id
    abstain_lp: dict[int, float] = {}

    def greedy(idx: list[int], bad: list[list[int]]) -> tuple[None, None, list[tuple[str, list[int]]], list[float], None, None]:
        first = not abstain_lp
        done = engine.run([RowSpec(encoded[i], max_new_tokens, eos_id, bad=bad, constraint=constraints[i] if constraints else None,
                                   ban_first=ban_first, abstain=abstain if first else None) for i in idx])
        if first:
            abstain_lp.update((i, d.abstain_logprob) for i, d in zip(idx, done))
        texts = _decoded(tokenizer, [encoded[i] for i in idx], done, [counts[i] for i in idx] if counts is not None else None)
        return None, None, list(zip(texts, [d.tokens for d in done])), [d.logprob for d in done], None, None

    idx = list(range(len(encoded)))
    _, _, texts, lps, _, _ = greedy(idx, banned)
    answers = _retried(greedy, idx, banned, {i: (*texts[i], lps[i]) for i in idx}, is_refusal, retries, opening)
    return [(answers[i][0], abstain_lp[i] - answers[i][2]) for i in idx]


def _retried(greedy: Callable[..., Any], idx: list[int], banned: list[list[int]], answers: dict[int, tuple[str, list[int], float]],
             is_refusal: Callable[[str], bool], retries: int,
             opening_of: Callable[[list[int]], list[int]] = lambda ids: ids[:2]) -> dict[int, tuple[str, list[int], float]]:
    """``answers`` (row -> (text, token ids, log-prob)) with each reworded refusal decoded again by ``greedy``, alone (rows
    differ in what they ban), with its own opening (``opening_of`` its tokens: the first two) banned too, up to
    ``retries`` times."""
    extra: dict[int, list[list[int]]] = {i: [] for i in idx}
    for _ in range(retries):
        again = [i for i in idx if is_refusal(answers[i][0])]
        if not again:
            break
        for i in again:
            opening = opening_of(answers[i][1])
            if len(opening) >= 2 and opening not in extra[i]:
                extra[i].append(opening)
            _, _, t, lp, _, _ = greedy([i], banned + extra[i])
            answers[i] = (*t[0], float(lp[0]))
    return answers


class BanAtStart:
    """A ``generate`` logits processor: ``tokens`` may not be the answer's first token (the one decoded
    after ``start`` input ids), unless nothing else is allowed there (a constraint forcing one of them).

    It runs after the constraint's processor (it keeps a token the constraint alone allows). A model
    that wanted to refuse, with the refusal ruled out, opens its answer with the refusal's
    subject ("The processes [1]") rather than with the answer itself; banning "The" there costs a
    real answer nothing under SQuAD scoring, which drops articles."""

    def __init__(self, start: int, tokens: list[int]) -> None:
        self.start, self.tokens = start, list(tokens)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if input_ids.shape[1] != self.start:
            return scores
        banned = scores.clone()
        banned[:, self.tokens] = -torch.inf
        stuck = torch.isinf(banned).all(-1)
        banned[stuck] = scores[stuck]
        return banned


# How a tuned model words its refusals ("The document doesn't...", "The Documents don't..."): the
# best *answering* continuation bans their first two tokens, not only the exact sentence's.
ABSTAIN_OPENINGS = ("The documents", "The document", "The Documents", "The Document", "The context", "The provided",
                    "The given", "The passages", "The passage", "The text", "There is no", "I cannot", "I can't")


def abstain_openings(tokenizer: Any, exact: list[int]) -> list[list[int]]:
    """``bad_words_ids`` banning the abstention's opening and its usual paraphrases' (two tokens each)."""
    seqs = [exact] + [tokenizer(o, add_special_tokens=False)["input_ids"][:2] for o in ABSTAIN_OPENINGS]
    return [list(x) for x in dict.fromkeys(tuple(q) for q in seqs if len(q) == 2)]


def _constraint_kwargs(rows: list[Any], offset: int, beams: int, vocab: int) -> dict[str, Any]:
    """``generate`` arguments restricting row ``b``'s answer (its ids after ``offset``) to ``rows[b]``'s allowed tokens:
    :class:`ConstrainedLogits` (one mask per row and step), or with beam search ``prefix_allowed_tokens_fn`` (a row
    whose constraint is None may take any of the ``vocab`` tokens); none when every row is free."""
    from transformers import LogitsProcessorList

    if all(row is None for row in rows):
        return {}
    if beams > 1:
        every = list(range(vocab))
        return {"prefix_allowed_tokens_fn": lambda b, seq: rows[b].allowed(seq[offset:].tolist()) if rows[b] is not None
                else every}
    return {"logits_processor": LogitsProcessorList([ConstrainedLogits(rows, offset)])}


class ConstrainedLogits:
    """A ``generate`` logits processor: row ``b`` may take only the tokens ``rows[b]`` allows after its answer so far
    (its ids after ``offset``). A constraint with ``allowed_mask`` (a boolean array over the vocabulary, as
    :class:`~rag_pipeline.answer.structured.GrammarConstraint` keeps its grammar's bitmask) is applied as it is;
    ``allowed`` (a list of ids) otherwise; a row whose constraint is None is free, and one with ``adjust(generated,
    scores)`` then changes its masked scores (:class:`~rag_pipeline.answer.polar.PolarStart`). transformers'
    ``prefix_allowed_tokens_fn`` takes lists only, which costs a list of up to the whole vocabulary per token inside a JSON
    string or a summary's sentence."""

    def __init__(self, rows: list[Any], offset: int) -> None:
        self.rows, self.offset = rows, offset

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        adjusted = []
        for b, row in enumerate(self.rows):
            if row is None:
                keep[b] = True
                continue
            generated = input_ids[b, self.offset:].tolist()
            mask = row.allowed_mask(generated) if hasattr(row, "allowed_mask") else None
            if mask is not None:
                keep[b, : len(mask)] = torch.from_numpy(mask).to(scores.device)
            else:
                keep[b, row.allowed(generated)] = True
            if hasattr(row, "adjust"):
                adjusted.append((b, row, generated))
        out = scores.masked_fill(~keep, -torch.inf)
        for b, row, generated in adjusted:  # a constraint that also reads the scores (a yes/no answer's opening)
            out[b] = row.adjust(generated, out[b])
        return out


class DecodeCancelled(Exception):
    """Raised out of a shared decode whose caller said, through :func:`cancel_scope`, that it no longer wants the answer."""


_CANCELLED: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("rag_pipeline_cancelled", default=None)


@contextlib.contextmanager
def cancel_scope(cancelled: Callable[[], bool]) -> Any:
    """Within this block (in this thread), rows handed to a :class:`rag_pipeline.batching.DecodeEngine` carry
    ``cancelled``: once it returns True, the engine drops them between two steps and their caller gets
    :class:`DecodeCancelled`. ``serve`` uses it so that an answer whose client has hung up stops decoding."""
    token = _CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _CANCELLED.reset(token)


@dataclass
class RowSpec:
    """One answer for a shared decode that rows join and leave between steps (:class:`rag_pipeline.batching.DecodeEngine`),
    with what ``generate`` would apply to it: the same bans, constraint and sampling, in ``generate``'s order.

    ``pick`` chooses the next token from a row's raw logits as ``generate`` does with ``bad_words_ids`` (a
    sequence's last token is banned where the ids so far end with the rest of it), :class:`ConstrainedLogits`,
    :class:`BanAtStart` and, sampling, transformers' temperature, top-k (the model's generation config) and
    top-p warpers, with its own seeded generator (a sampled answer does not depend on what it is batched with).
    """

    prompt: list[int]
    max_new_tokens: int
    eos_id: int
    bad: list[list[int]] = field(default_factory=list)  # bad_words_ids
    constraint: Any = None  # allowed_mask(ids) or allowed(ids) over the answer so far (grounded, summary, JSON)
    ban_first: list[int] = field(default_factory=list)  # tokens that may not open the answer (BanAtStart)
    sample: tuple[float, float, int] | None = None  # (temperature, top_p, seed); None: greedy
    abstain: list[int] | None = None  # also score log P(these tokens | prompt) (the null margin's abstention)
    on_token: Callable[[int], None] | None = None  # each decoded token but EOS, as it is decoded
    cancelled: Callable[[], bool] | None = field(default_factory=_CANCELLED.get)  # True: drop the row (cancel_scope)

    def warpers(self, top_k: int | None) -> list[Any]:
        """transformers' sampling warpers for this row, in ``generate``'s order (empty when greedy)."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if self.sample is None:
            return []
        temperature, top_p, _ = self.sample
        return ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + (
            [TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def pick(self, logits: Any, answer: list[int], warpers: list[Any], rng: Any) -> int:
        """The next token after ``answer`` (the ids decoded so far) from ``logits`` ((vocab,) float32, raw)."""
        import torch

        scores = logits.clone()
        ids = self.prompt + answer
        for seq in self.bad:
            if len(seq) == 1 or (len(ids) >= len(seq) - 1 and ids[len(ids) - len(seq) + 1:] == seq[:-1]):
                scores[seq[-1]] = -torch.inf
        if self.constraint is not None:
            scores = ConstrainedLogits([self.constraint], 0)(torch.tensor([answer], dtype=torch.long), scores[None])[0]
        if self.ban_first and not answer:
            scores = BanAtStart(0, self.ban_first)(torch.zeros((1, 0), dtype=torch.long), scores[None])[0]
        if not warpers:
            return int(scores.argmax())
        row = scores[None]
        for w in warpers:
            row = w(None, row)
        return int(torch.multinomial(row.softmax(-1), 1, generator=rng))


def _abstain_logprob(model: Any, kind: Kind, ids: Any, mask: Any, res: Any, first: Any, abstain: list[int]) -> Any:
    """log P(abstain | prompt) per row; ``first`` holds log-probs at the first answer position (batch, vocab)."""
    import torch

    n = ids.shape[0]
    target = torch.tensor(abstain, device=ids.device).expand(n, -1).contiguous()  # (batch, L)
    if kind == "causal":
        cache = getattr(res, cache_name())
        extra = cache.get_seq_length() - ids.shape[1]
        if extra > 0:
            cache.crop(-extra)  # the prompt's keys and values only
        pos = mask.sum(1, keepdim=True) + torch.arange(len(abstain) - 1, device=ids.device)
        rest = model(input_ids=target[:, :-1], attention_mask=torch.cat([mask, torch.ones_like(target[:, :-1])], 1),
                     position_ids=pos, use_cache=True, **{cache_name(): cache}).logits.float().log_softmax(-1)
        lp = torch.cat([first.unsqueeze(1), rest], 1)  # (batch, L, vocab)
    else:
        lp = model(input_ids=ids, attention_mask=mask, labels=target).logits.float().log_softmax(-1)
    return lp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(1)
