"""Continuous batching: one thread decodes every running answer in one batch, and answers join and leave between steps.

``serve`` answers each request in its own thread; where ``generate`` would run a batch of its own, the
request hands its rows to the :class:`DecodeEngine` (:func:`rag_pipeline.generator.generate_answers` and
``generate_with_margins`` with ``engine=``) and waits. The engine's thread, between two decode steps,
reads each new row's prompt alone (its keys and values, and with ``abstain`` the null margin's
abstention scored on them), copies them into the shared cache, and decodes one token for every
running row at once; a row that ends (EOS or its token limit) leaves the batch at once and its
caller gets its tokens. A short answer asked while a long summary is being written is therefore
answered in its own few steps, not after the summary, and a request never waits for a batch to fill.

The shared cache (:class:`_Slots`) holds each layer's keys and values as ``(rows, heads, capacity, dim)``
buffers, every row's text ending at the same column (left padding, masked): a step writes one column,
a row joins by copying its prompt's columns in, and leaves by taking the last row's place. Rows see only
their own tokens (the attention mask and per-row positions), so a greedy answer is the one ``generate``
gives that prompt, up to the last bits of the floating-point sums (batch shapes differ).

Each row keeps what ``generate`` would apply to it (:class:`~rag_pipeline.generator.RowSpec`: banned
openings, a grounded or JSON constraint, the first-word ban, seeded sampling), and the sum of its tokens'
raw log-probabilities, so calibrated answers keep their margins. Beam search and encoder-decoders decode
as before, holding :attr:`DecodeEngine.lock` so that they never run beside a step.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from rag_pipeline.generator import DecodeCancelled, RowSpec, accepts, cache_name, static_cache

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """A finished row: its tokens up to and with the first EOS, and log-probabilities under the raw logits."""

    tokens: list[int]
    logprob: float  # sum over ``tokens`` (what the null margin compares)
    abstain_logprob: float | None = None  # log P(RowSpec.abstain | prompt), when asked for


@dataclass
class EngineStats:
    steps: int = 0  # decode steps run
    rows: int = 0  # rows decoded
    largest: int = 0  # most rows in one step
    drafted: int = 0  # tokens guessed by prompt lookup and checked in a step
    accepted: int = 0  # of them, those the row took


class _Row:
    def __init__(self, spec: RowSpec, future: Future, warpers: list[Any]) -> None:
        import torch

        self.spec, self.future, self.warpers = spec, future, warpers
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.abstain_logprob: float | None = None
        self.rng = torch.Generator().manual_seed(spec.sample[2]) if spec.sample else None
        self.where: dict[int, list[int]] | None = None  # token -> its positions in prompt + tokens, from the first draft

    def take(self, logits: Any) -> bool:
        """Choose the next token from ``logits`` ((vocab,) float32); True when the row has ended.

        Raises:
            DecodeCancelled: the row's caller no longer wants it (``RowSpec.cancelled``).
        """
        if self.spec.cancelled is not None and self.spec.cancelled():
            raise DecodeCancelled("the answer was cancelled by its caller")
        token = self.spec.pick(logits, self.tokens, self.warpers, self.rng)
        self.logprob += float(logits.log_softmax(-1)[token])
        if self.where is not None:
            self.where.setdefault(token, []).append(len(self.spec.prompt) + len(self.tokens))
        self.tokens.append(token)
        if token != self.spec.eos_id and self.spec.on_token is not None:
            self.spec.on_token(token)
        return token == self.spec.eos_id or len(self.tokens) >= self.spec.max_new_tokens

    def draft(self, k: int, max_ngram: int = 3) -> list[int]:
        """Up to ``k`` tokens guessed to come next, greedy rows only: what followed the latest earlier place in the prompt
        and answer where the text's last tokens also stand (its last ``max_ngram`` tokens if they stand anywhere else,
        else fewer; prompt lookup). An answer copied from a passage is guessed a span at a time."""
        if k < 1 or self.spec.sample is not None or not self.tokens:
            return []
        text = self.spec.prompt + self.tokens
        if self.where is None:
            self.where = {}
            for i, t in enumerate(text):
                self.where.setdefault(t, []).append(i)
        end = len(text) - 1
        best, best_n = -1, 0
        for pos in reversed(self.where.get(text[-1], ())):
            if pos >= end:
                continue
            n = 1
            while n < max_ngram and pos - n >= 0 and text[pos - n] == text[end - n]:
                n += 1
            if n > best_n:
                best, best_n = pos, n
                if n == max_ngram:
                    break
        room = self.spec.max_new_tokens - len(self.tokens)  # the last of them needs no guess
        return text[best + 1: best + 1 + min(k, room - 1)] if best >= 0 else []

    @property
    def position(self) -> int:  # of the last token, the one the next step reads
        return len(self.spec.prompt) + len(self.tokens) - 1

    def done(self) -> None:
        self.future.set_result(Decoded(self.tokens, self.logprob, self.abstain_logprob))


class _Slots:
    """The running rows' keys and values: per layer ``(max_rows, heads, capacity, dim)``, texts ending at column ``width``."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.mask: Any = None  # (max_rows, capacity) long, 1 on real tokens
        self.width = 0
        self.n = 0

    @property
    def capacity(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def reserve(self, width: int, like: Any = None) -> None:
        """Room for ``width`` columns (grown by doubling; ``like``: per-layer (keys, values) giving heads, dim and dtype,
        needed before the first allocation)."""
        import torch

        if width <= self.capacity:
            return
        like = like or list(zip(self.keys, self.values))
        cap = max(width, 2 * self.capacity, 256)
        keys = [torch.zeros((self.max_rows, k.shape[1], cap, k.shape[3]), dtype=k.dtype, device=k.device) for k, _ in like]
        values = [torch.zeros((self.max_rows, v.shape[1], cap, v.shape[3]), dtype=v.dtype, device=v.device) for _, v in like]
        mask = torch.zeros((self.max_rows, cap), dtype=torch.long, device=like[0][0].device)
        for new, old in zip(keys + values + [mask], self.buffers()):
            _cols(new, slice(None), 0, self.width).copy_(_cols(old, slice(None), 0, self.width))
        self.keys, self.values, self.mask = keys, values, mask

    def add(self, prompt: list[tuple[Any, Any]]) -> None:
        """Append a row from its prompt's per-layer (keys, values), each ``(1, heads, length, dim)``."""
        length = prompt[0][0].shape[2]
        if self.n == 0:
            self.width = 0
        if length > self.width:  # the running rows move right to make room on the left
            self.reserve(length + 1, prompt)
            shift = length - self.width
            rows = slice(0, self.n)
            for buf in self.buffers():
                _cols(buf, rows, shift, length).copy_(_cols(buf, rows, 0, self.width).clone())
                _cols(buf, rows, 0, shift).zero_()
            self.width = length
        self.reserve(self.width + 1, prompt)
        r, start = self.n, self.width - length
        for buf, (k, v) in zip(zip(self.keys, self.values), prompt):
            buf[0][r, :, start:self.width] = k[0]
            buf[1][r, :, start:self.width] = v[0]
        self.mask[r, :start] = 0
        self.mask[r, start:self.width] = 1
        self.n += 1

    def remove(self, r: int) -> None:
        """Drop row ``r``: the last row takes its place."""
        last = self.n - 1
        if r != last:
            for buf in self.buffers():
                _cols(buf, r, 0, self.width).copy_(_cols(buf, last, 0, self.width))
        self.n -= 1
        if self.n:
            self._trim()

    def _trim(self) -> None:
        """Drop leading columns no running row uses (once there are at least 64)."""
        first = int(self.mask[: self.n, : self.width].any(0).long().argmax())
        if first < 64:
            return
        rows = slice(0, self.n)
        for buf in self.buffers():
            _cols(buf, rows, 0, self.width - first).copy_(_cols(buf, rows, first, self.width).clone())
        self.width -= first

    def buffers(self) -> list[Any]:
        return self.keys + self.values + ([] if self.mask is None else [self.mask])

    def cache(self) -> Any:
        """A transformers cache over the running rows whose layers write the next column in place."""
        from transformers.cache_utils import Cache

        return Cache(layers=[_SlotLayer(self, i) for i in range(len(self.keys))])


def _cols(buf: Any, rows: slice | int, start: int, stop: int) -> Any:
    """The view of columns ``start:stop`` of ``rows``: a key/value buffer's dimension 2, the mask's dimension 1."""
    return buf[rows, :, start:stop] if buf.dim() == 4 else buf[rows, start:stop]


def _slot_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer of :class:`_Slots` as a transformers cache layer: ``update`` writes the new columns after ``width``."""

        def __init__(self, slots: _Slots, index: int) -> None:
            super().__init__()
            self.slots, self.index = slots, index
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            s, q = self.slots, key_states.shape[-2]
            keys, values = s.keys[self.index], s.values[self.index]
            keys[: s.n, :, s.width:s.width + q] = key_states
            values[: s.n, :, s.width:s.width + q] = value_states
            self.keys, self.values = keys[: s.n, :, : s.width + q], values[: s.n, :, : s.width + q]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.slots.width

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.slots.width + query_length, 0

    return SlotLayer


_SLOT_LAYER: type | None = None


def _SlotLayer(slots: _Slots, index: int) -> Any:  # noqa: N802 - a class, built on first use (transformers imports lazily)
    global _SLOT_LAYER
    if _SLOT_LAYER is None:
        _SLOT_LAYER = _slot_layer_class()
    return _SLOT_LAYER(slots, index)


class DecodeEngine:
    """The decode thread of a server: rows from many callers decode together, joining and leaving between steps.

    ``run(specs)`` blocks until its rows are decoded; any number of threads may call it at once. At most
    ``max_rows`` rows decode together (more wait for a free place, in order). ``lock`` is held for every
    prompt read and step: a caller that runs the model itself (beam search) holds it too.
    """

    def __init__(self, model: Any, max_rows: int = 16, draft_tokens: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows is {max_rows}: it must be at least 1")
        if draft_tokens < 0:
            raise ValueError(f"draft_tokens is {draft_tokens}: it must be 0 (no guesses) or more")
        self.model, self.max_rows, self.draft_tokens = model, max_rows, draft_tokens
        self.lock = threading.RLock()
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: deque[tuple[RowSpec, Future]] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._rows: list[_Row] = []
        self._slots = _Slots(max_rows)
        self._closed = False
        top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
        self._top_k = 50 if top_k is None else top_k  # generate's global default when the model's config sets none
        self.device = next(model.parameters()).device  # rows choose their tokens on the CPU (logits are moved there)
        # a prompt's logits at its last position only, as generate asks (the vocabulary's product is a fifth of a prompt's work)
        self._last_only = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
        self._lean = lean_supported(model)  # decode steps without transformers' per-call machinery
        self._thread = threading.Thread(target=self._run, name="rag-decode-engine", daemon=True)

    def start(self) -> DecodeEngine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish nothing new: rows still waiting or decoding fail with RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def submit(self, specs: list[RowSpec]) -> list[Future]:
        futures = [Future() for _ in specs]
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode engine has stopped")
            self._waiting.extend(zip(specs, futures))
            self._cond.notify()
        return futures

    def run(self, specs: list[RowSpec]) -> list[Decoded]:
        """Decode ``specs`` in the shared batch; their results in order. An engine that was never started (``ask``'s
        own) decodes them in the calling thread: torch's work stays on one thread (see :meth:`call`)."""
        if self._thread.ident is None:
            return self._run_here(specs)
        return [f.result() for f in self.submit(specs)]

    def _run_here(self, specs: list[RowSpec]) -> list[Decoded]:
        import torch

        if self._closed:
            raise RuntimeError("the decode engine has stopped")
        waiting = deque((spec, Future()) for spec in specs)
        futures = [f for _, f in waiting]
        with torch.no_grad(), self.lock:
            try:
                while waiting or self._rows:
                    while waiting and len(self._rows) < self.max_rows:
                        self._join(*waiting.popleft())
                    if self._rows:
                        self._step_safely()
            except BaseException:  # an interrupt (KeyboardInterrupt in a callback): no row is left for the next call
                self._rows, self._slots = [], _Slots(self.max_rows)
                raise
        return [f.result() for f in futures]

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the engine's thread between two steps (its result, or its exception raised here).

        Other torch work of a server (the retriever's question embeddings) goes here: torch's OpenMP threads then
        serve one calling thread. Each thread that runs torch operations keeps its own team of OpenMP threads, and
        with more teams than cores they stop spinning between parallel regions: a decode step in a thread beside
        another team took 38 ms against 27 ms alone (SmolLM2-135M, 2 cores).
        """
        if self._thread.ident is None:  # never started: the caller's thread is the engine's
            return fn()
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode engine has stopped")
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result()

    # ---- the engine thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - a dead engine must not leave callers waiting forever
            log.exception("the decode engine stopped on an error")
            with self._cond:
                self._closed = True
            for row in self._rows:
                _fail(row.future, e)
            for _, future in [*self._waiting, *self._calls]:
                _fail(future, e)

    def _loop(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._waiting and not self._calls and not self._rows and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                new = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_rows - len(self._rows)))]
                calls = [self._calls.popleft() for _ in range(len(self._calls))]
            for fn, future in calls:
                _settle(future, fn)
            with torch.no_grad(), self.lock:
                for spec, future in new:
                    self._join(spec, future)
                if self._rows:
                    self._step_safely()
        error = RuntimeError("the decode engine has stopped")
        for row in self._rows:
            _fail(row.future, error)
        for _, future in [*self._waiting, *self._calls]:
            _fail(future, error)

    def _join(self, spec: RowSpec, future: Future) -> None:
        """Read ``spec``'s prompt alone, choose its first token, and add it to the running rows unless it has ended."""
        import torch
        from transformers import DynamicCache

        try:
            if spec.cancelled is not None and spec.cancelled():  # its caller went away while it waited: no prefill
                raise DecodeCancelled("the answer was cancelled by its caller")
            row = _Row(spec, future, spec.warpers(self._top_k))
            cache = DynamicCache()
            n = len(spec.prompt)
            logits = self.model(input_ids=torch.tensor([spec.prompt], device=self.device), use_cache=True, **self._last_only,
                                **{cache_name(): cache}).logits[0, -1].float().cpu()
            if spec.abstain:
                row.abstain_logprob = self._abstain_logprob(cache, logits, spec.abstain, n)
            if row.take(logits):
                row.done()
                return
            self._slots.add([(layer.keys, layer.values) for layer in cache.layers])
            self._rows.append(row)
            self.stats.rows += 1
        except Exception as e:  # noqa: BLE001 - the caller gets the error; the other rows go on
            _fail(future, e)

    def _abstain_logprob(self, cache: Any, first: Any, abstain: list[int], n: int) -> float:
        """log P(abstain | prompt), read on the prompt's cache, which is then cropped back to the prompt."""
        import torch

        lp = float(first.log_softmax(-1)[abstain[0]])
        if len(abstain) > 1:
            rest = self.model(input_ids=torch.tensor([abstain[:-1]], device=self.device),
                              position_ids=torch.arange(n, n + len(abstain) - 1, device=self.device)[None],
                              use_cache=True, **{cache_name(): cache}).logits[0].float().cpu().log_softmax(-1)
            lp += float(rest.gather(-1, torch.tensor(abstain[1:])[:, None]).sum())
            cache.crop(-(len(abstain) - 1))  # back to the prompt's keys and values
        return lp

    def _step_safely(self) -> None:
        try:
            self._step()
        except Exception as e:  # noqa: BLE001 - every running row's caller gets the error; the engine goes on
            log.exception("a decode step of %d rows failed", len(self._rows))
            for row in self._rows:
                row.future.set_exception(e)
            self._rows, self._slots = [], _Slots(self.max_rows)

    def _step(self) -> None:
        """One decode step: every running row reads its last token and, greedy rows with ``draft_tokens``, the tokens
        prompt lookup guesses come after it (:meth:`_Row.draft`); a row takes tokens from the step's logits in order
        while they equal its guesses, so it advances one token or more, choosing each as it would one step at a time."""
        import torch

        s, rows = self._slots, self._rows
        drafts = [row.draft(self.draft_tokens) for row in rows]
        width = 1 + max(map(len, drafts))
        s.reserve(s.width + width)
        s.mask[: s.n, s.width:s.width + width] = 1
        last = torch.tensor([[r.tokens[-1], *d] + [r.tokens[-1]] * (width - 1 - len(d)) for r, d in zip(rows, drafts)],
                            device=self.device)
        positions = torch.tensor([[r.position + j for j in range(width)] for r in rows], device=self.device)
        mask = s.mask[: s.n, : s.width + width]
        if self._lean:
            logits = llama_step(self.model, last, positions, s, _step_mask(mask) if width == 1 else _draft_mask(mask, width)).float().cpu()
        else:
            logits = self.model(input_ids=last, attention_mask=None if bool(mask.all()) else mask, position_ids=positions,
                                use_cache=True, **{cache_name(): s.cache()}).logits.float().cpu()
        self.stats.steps += 1
        self.stats.largest = max(self.stats.largest, len(rows))
        ended: list[tuple[int, BaseException | None]] = []
        advance = 1
        for r, (row, draft) in enumerate(zip(rows, drafts)):
            taken = 0
            try:
                while True:
                    taken += 1
                    if row.take(logits[r, taken - 1]):
                        ended.append((r, None))
                        break
                    if taken > len(draft) or row.tokens[-1] != draft[taken - 1]:
                        break
            except Exception as e:  # noqa: BLE001 - its constraint or its caller's callback failed: that row only
                ended.append((r, e))
            self.stats.drafted += len(draft)
            self.stats.accepted += taken - 1
            s.mask[r, s.width + taken:s.width + width] = 0  # the guesses it did not take: never attended to
            advance = max(advance, taken)
        s.width += advance  # columns past it hold no row's token and are written again by the next step
        for r, error in reversed(ended):  # from the end: a removed row's place is taken by the last one
            row = rows[r]
            rows[r] = rows[-1]
            rows.pop()
            s.remove(r)
            if error is None:
                row.done()
            else:
                _fail(row.future, error)


def _step_mask(mask: Any) -> Any | None:
    """The lean one-token step's attention mask from the slots' ``(rows, columns)`` mask: None when every column is
    attended, else ``(rows, 1, 1, columns)`` (:func:`_draft_mask` for a step of several tokens)."""
    return None if bool(mask.all()) else mask.bool()[:, None, None, :]


def _draft_mask(mask: Any, q: int) -> Any:
    """``(rows, 1, q, columns)``: each of the step's ``q`` tokens (the last columns) sees the columns before them that
    ``mask`` marks and the step's tokens up to its own (causal)."""
    import torch

    before = mask[:, : -q].bool()[:, None, None, :].expand(-1, 1, q, -1)
    causal = torch.ones((q, q), dtype=torch.bool, device=mask.device).tril()[None, None].expand(mask.shape[0], 1, q, q)
    return torch.cat([before, causal], -1)


# Decoder-only models whose layers are Llama's: pre-norm attention (rotary positions, grouped keys and values) and
# a gated MLP, with the same module names; their decode step is :func:`llama_step`.
LEAN_TYPES = ("llama", "mistral", "qwen2")


def lean_supported(model: Any) -> bool:
    """Whether :func:`llama_step` computes this model's decode step (a Llama-layout causal model, no adapter wrapper)."""
    inner = getattr(model, "model", None)
    return (getattr(model.config, "model_type", None) in LEAN_TYPES and hasattr(model, "lm_head")
            and all(hasattr(inner, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")))


def llama_step(model: Any, last: Any, positions: Any, slots: _Slots, mask: Any | None) -> Any:
    """One decode step of a Llama-layout model over the running rows: the logits ``(rows, q, vocab)`` of the ``q``
    tokens each row reads (``last``, ``(rows, q)``: its last token, then any guesses to check), each layer's new keys
    and values written at columns ``slots.width`` onwards. ``mask``: None (every column attended, one token),
    ``(rows, 1, 1, columns)`` or, for ``q`` tokens, ``(rows, 1, q, columns)``.

    The same modules and operations, in the same order, as transformers' forward with a mask and per-row positions
    (the query grouped by key/value head, as its SDPA path does for one token), so the logits are the same to the
    bit (``tests/test_batching.py``); what it leaves out is the per-call machinery around them (mask building,
    cache objects, output capturing, keyword plumbing): 24.7 ms against 33.3 a step for SmolLM2-135M on 2 cores.
    """
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    inner, cfg, n, w, q_len = model.model, model.config, slots.n, slots.width, last.shape[1]
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    x = inner.embed_tokens(last)  # (rows, q, hidden)
    cos, sin = inner.rotary_emb(x, positions)
    groups = heads // kv_heads
    attend = mask if mask is None or mask.shape[2] == 1 else mask.repeat(1, 1, groups, 1)  # a row per grouped query
    for i, layer in enumerate(inner.layers[: cfg.num_hidden_layers]):
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = a.q_proj(h).view(n, q_len, heads, -1).transpose(1, 2)
        k = a.k_proj(h).view(n, q_len, kv_heads, -1).transpose(1, 2)
        v = a.v_proj(h).view(n, q_len, kv_heads, -1).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = slots.keys[i], slots.values[i]
        keys[:n, :, w:w + q_len], values[:n, :, w:w + q_len] = k, v
        out = F.scaled_dot_product_attention(q.reshape(n, kv_heads, groups * q_len, -1), keys[:n, :, : w + q_len],
                                             values[:n, :, : w + q_len], attn_mask=attend, scale=a.scaling)
        x = x + a.o_proj(out.reshape(n, heads, q_len, -1).transpose(1, 2).reshape(n, q_len, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(inner.norm(x))


def _fail(future: Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
        future.set_exception(e)


# generation-config settings generate would apply that RowSpec.pick does not: a model that sets one decodes as before
UNHANDLED = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0, "min_length": 0, "suppress_tokens": None,
             "begin_suppress_tokens": None, "encoder_repetition_penalty": 1.0, "forced_bos_token_id": None, "forced_eos_token_id": None}


def supported(model: Any, kind: str) -> bool:
    """Whether a model can decode on a :class:`DecodeEngine`: a causal model whose layers all attend to the whole text
    (a sliding-window layer's cache would need cropping that the shared cache does not do), and whose generation
    config asks for no logits processing beyond what :meth:`RowSpec.pick` does (:data:`UNHANDLED`)."""
    gc = getattr(model, "generation_config", None)
    if any(getattr(gc, k, None) not in (None, neutral) for k, neutral in UNHANDLED.items()):
        return False
    return kind == "causal" and static_cache(model, 8) is not None
