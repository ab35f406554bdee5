"""rag_pipeline.batching: the continuous-batching decode engine, on a tiny model built in code.

The reference is ``generate`` on each prompt alone: rows that join, leave and share steps with
others must decode exactly what they would alone (float32, so the sums agree to the last bits
that could flip a token), keep their margins, bans, constraints and seeded samples.
"""

from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rag_pipeline import batching  # noqa: E402
from rag_pipeline import generator as G  # noqa: E402
from rag_pipeline.prompt import get_template, to_model_text  # noqa: E402

try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.tiny_models import build_tiny_llama, build_tiny_t5, raft_rows
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_t5, raft_rows  # type: ignore[no-redef]

TEMPLATE = get_template("raft-v1")
ABSTAIN = "The documents don't contain the answer."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model, tok, kind = G.load_generator(str(build_tiny_llama(tmp_path_factory.mktemp("engine") / "llama")), device="cpu")
    return model, tok, kind


@pytest.fixture
def engine(tiny: tuple):
    eng = batching.DecodeEngine(tiny[0], max_rows=3).start()
    yield eng
    eng.stop()


def _texts(tok, n: int, seed: int = 3) -> list[str]:
    """Model texts of different lengths (so rows join with prompts longer and shorter than the running ones)."""
    texts = [to_model_text(tok, TEMPLATE, r["prompt"]) for r in raft_rows(n, seed=seed)]
    return [t[: 120 + 60 * (i % 4)] + t[-40:] for i, t in enumerate(texts)]


def _alone(model, tok, kind, texts, **kw) -> list[str]:
    return [G.generate_answers(model, tok, kind, [t], **kw)[0] for t in texts]


def test_rows_decode_what_they_decode_alone_while_joining_and_leaving(tiny, engine) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 8)
    got = G.generate_answers(model, tok, kind, texts, max_new_tokens=9, engine=engine)
    assert got == _alone(model, tok, kind, texts, max_new_tokens=9)
    # more rows than places: they joined as others left, and steps were shared
    assert engine.stats.rows == 8 and engine.stats.largest == 3 and engine.stats.steps < 8 * 8


def test_callers_in_threads_share_steps_and_each_gets_its_own_answers(tiny, engine) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 6, seed=7)
    want = _alone(model, tok, kind, texts, max_new_tokens=7)
    got: dict[int, str] = {}

    def call(i: int) -> None:
        got[i] = G.generate_answers(model, tok, kind, [texts[i]], max_new_tokens=7, engine=engine)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(texts))] == want
    assert engine.stats.largest > 1


def test_a_longer_prompt_joining_a_running_batch_moves_it_right(tiny, engine) -> None:
    """A short row decodes; a longer prompt joins mid-way (the running rows shift right), then a short one
    joins (it is padded on the left): all three decode as alone, and so do their streamed tokens."""
    model, tok, kind = tiny
    base = _texts(tok, 3, seed=11)
    texts = [base[0][:100] + base[0][-30:], base[1] + base[1][:200], base[2][:90] + base[2][-30:]]
    stepped = threading.Event()
    streamed: list[list[int]] = [[], [], []]

    def note(i: int, token: int) -> None:
        streamed[i].append(token)
        stepped.set()

    specs = [G.RowSpec(G.encode_prompt(tok, kind, t), 12, tok.eos_token_id, on_token=lambda tok_, i=i: note(i, tok_))
             for i, t in enumerate(texts)]
    first = engine.submit(specs[:1])
    assert stepped.wait(30)
    rest = engine.submit(specs[1:])
    done = [f.result(60) for f in first + rest]
    for t, d, s in zip(texts, done, streamed):
        alone = G.generate_answers(model, tok, kind, [t], max_new_tokens=12)[0]
        assert tok.decode(d.tokens, skip_special_tokens=True).strip() == alone
        assert s == [x for x in d.tokens if x != tok.eos_token_id]


def test_margins_bans_and_retries_equal_the_batch_path(tiny, engine) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 5, seed=5)
    plain = G.generate_with_margins(model, tok, kind, texts, ABSTAIN, max_new_tokens=6, batch_size=1, ban_first_word=True)
    got = G.generate_with_margins(model, tok, kind, texts, ABSTAIN, max_new_tokens=6, engine=engine, ban_first_word=True)
    assert [a for a, _ in got] == [a for a, _ in plain]
    assert [m for _, m in got] == pytest.approx([m for _, m in plain], abs=1e-3)
    refused = plain[-1][0]  # pretend this answer is a reworded refusal: decoded again with its opening banned
    counts = [G.DecodeCounts() for _ in texts]
    again = G.generate_with_margins(model, tok, kind, texts, ABSTAIN, max_new_tokens=6, batch_size=1, ban_first_word=True,
                                    is_refusal=lambda t: t == refused, max_refusal_retries=1)
    got = G.generate_with_margins(model, tok, kind, texts, ABSTAIN, max_new_tokens=6, engine=engine, ban_first_word=True,
                                  is_refusal=lambda t: t == refused, max_refusal_retries=1, counts=counts)
    assert [a for a, _ in got] == [a for a, _ in again] and got[-1][0] != refused
    assert [m for _, m in got] == pytest.approx([m for _, m in again], abs=1e-3)
    assert counts[-1].prompt_tokens == 2 * len(G.encode_prompt(tok, kind, texts[-1]))  # the retry read the prompt again


class EveryThird:
    """A constraint: token ids congruent to the answer's length mod 3, EOS from the fourth token on."""

    def __init__(self, vocab: int, eos: int, mask: bool) -> None:
        self.vocab, self.eos, self.mask = vocab, eos, mask

    def allowed(self, generated: list[int]) -> list[int]:
        ids = [t for t in range(self.vocab) if t % 3 == len(generated) % 3]
        return ids + [self.eos] * (len(generated) >= 3)

    def allowed_mask(self, generated: list[int]):
        if not self.mask:
            return None
        out = np.zeros(self.vocab, dtype=bool)
        out[self.allowed(generated)] = True
        return out


@pytest.mark.parametrize("mask", [False, True])
def test_constrained_rows_keep_their_constraint(tiny, engine, mask: bool) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 4, seed=2)
    rows = [EveryThird(model.config.vocab_size, tok.eos_token_id, mask) for _ in texts]
    got = G.generate_answers(model, tok, kind, texts, max_new_tokens=8, engine=engine, constraints=rows)
    want = [G.generate_answers(model, tok, kind, [t], max_new_tokens=8, constraints=[r])[0] for t, r in zip(texts, rows)]
    assert got == want


def test_sampled_rows_are_seeded_and_do_not_depend_on_their_batch_mates(tiny, engine) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 4, seed=9)
    kw = dict(max_new_tokens=8, do_sample=True, seed=4, temperature=1.5, top_p=0.9)
    a = G.generate_answers(model, tok, kind, texts, engine=engine, **kw)
    assert a == G.generate_answers(model, tok, kind, texts, engine=engine, **kw)
    spec = G.RowSpec(G.encode_prompt(tok, kind, texts[0]), 8, tok.eos_token_id, sample=(1.5, 0.9, 123))
    alone = engine.run([spec])[0].tokens
    together = engine.run([spec, *[G.RowSpec(G.encode_prompt(tok, kind, t), 8, tok.eos_token_id) for t in texts[1:]]])[0].tokens
    assert alone == together
    assert G.generate_answers(model, tok, kind, texts, engine=engine, **{**kw, "seed": 5}) != a


def test_beam_search_and_seq2seq_decode_beside_the_engine(tiny, engine, tmp_path) -> None:
    model, tok, kind = tiny
    texts = _texts(tok, 2)
    assert G.generate_answers(model, tok, kind, texts, max_new_tokens=5, num_beams=2, engine=engine) == \
        G.generate_answers(model, tok, kind, texts, max_new_tokens=5, num_beams=2)
    t5, t5_tok, t5_kind = G.load_generator(str(build_tiny_t5(tmp_path / "t5")), device="cpu")
    assert not batching.supported(t5, t5_kind) and batching.supported(model, kind)
    assert G.generate_answers(t5, t5_tok, t5_kind, texts, max_new_tokens=4, engine=engine) == \
        G.generate_answers(t5, t5_tok, t5_kind, texts, max_new_tokens=4)


def test_a_failing_row_fails_its_caller_only_and_a_stopped_engine_refuses(tiny) -> None:
    model, tok, kind = tiny
    eng = batching.DecodeEngine(model, max_rows=2).start()
    texts = _texts(tok, 2)

    class Broken:
        def allowed(self, generated: list[int]) -> list[int]:
            raise ValueError("broken constraint")

    good = G.RowSpec(G.encode_prompt(tok, kind, texts[0]), 5, tok.eos_token_id)
    bad = G.RowSpec(G.encode_prompt(tok, kind, texts[1]), 5, tok.eos_token_id, constraint=Broken())
    f_good, f_bad = eng.submit([good, bad])
    with pytest.raises(ValueError, match="broken constraint"):
        f_bad.result(30)
    assert tok.decode(f_good.result(30).tokens, skip_special_tokens=True).strip() == \
        G.generate_answers(model, tok, kind, [texts[0]], max_new_tokens=5)[0]
    eng.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        eng.run([good])
    with pytest.raises(ValueError, match="max_rows"):
        batching.DecodeEngine(model, max_rows=0)


def test_slots_trim_columns_no_running_row_uses() -> None:
    """Rows leave; once 64 or more leading columns are padding for every row left, they are dropped."""
    slots = batching._Slots(max_rows=2)
    layer = lambda n, v: [(torch.full((1, 1, n, 2), v), torch.full((1, 1, n, 2), -v))]  # noqa: E731
    slots.add(layer(100, 1.0))
    slots.add(layer(10, 2.0))
    assert slots.width == 100 and slots.mask[1, :90].sum() == 0 and slots.mask[1, 90:100].all()
    slots.remove(0)  # the long row leaves; the short one takes its place and 90 padding columns go
    assert slots.n == 1 and slots.width == 10
    assert torch.equal(slots.keys[0][0, :, :10], torch.full((1, 10, 2), 2.0)) and slots.mask[0, :10].all()


def test_rows_decoding_past_the_cache_capacity_grow_it(tiny) -> None:
    """The shared cache starts at 256 columns (or the longest prompt); decoding past it grows it, keeping every row."""
    model, tok, kind = tiny
    eng = batching.DecodeEngine(model, max_rows=2).start()
    try:
        texts = _texts(tok, 2, seed=13)
        lengths = [len(G.encode_prompt(tok, kind, t)) for t in texts]
        n = 300 - min(lengths)  # past 256 columns and past the longest prompt's own capacity
        got = G.generate_answers(model, tok, kind, texts, max_new_tokens=n, engine=eng)
        assert got == _alone(model, tok, kind, texts, max_new_tokens=n)
        assert eng._slots.capacity > max(lengths) + 1
    finally:
        eng.stop()


def test_calls_run_on_the_engine_thread_between_steps_and_raise_in_the_caller(tiny, engine) -> None:
    assert engine.call(lambda: threading.current_thread().name) == "rag-decode-engine"

    def boom() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        engine.call(boom)
    model, tok, kind = tiny
    texts = _texts(tok, 2)
    assert G.generate_answers(model, tok, kind, texts, max_new_tokens=4, engine=engine) == _alone(model, tok, kind, texts, max_new_tokens=4)


def _decoded_by(model, specs: list, lean: bool, draft_tokens: int = 0) -> tuple[list, batching.EngineStats]:
    """``specs`` decoded by a started engine of 3 rows, on its lean step or transformers' forward: (results, stats)."""
    eng = batching.DecodeEngine(model, max_rows=3, draft_tokens=draft_tokens)
    eng._lean = lean
    eng.start()
    try:
        return eng.run(specs), eng.stats
    finally:
        eng.stop()


def test_the_lean_llama_step_gives_transformers_logits_to_the_bit(tiny) -> None:
    """The engine's own decode step for Llama-layout models against the model's forward over the same shared cache:
    rows of different lengths (a mask), joining and leaving; every token and log-probability exactly equal."""
    model, tok, kind = tiny
    assert batching.lean_supported(model)
    texts = _texts(tok, 6, seed=21)
    specs = [G.RowSpec(G.encode_prompt(tok, kind, t), 10, tok.eos_token_id, abstain=[5, 6, tok.eos_token_id]) for t in texts]
    runs = [_decoded_by(model, specs, lean)[0] for lean in (True, False)]
    assert [(d.tokens, d.logprob, d.abstain_logprob) for d in runs[0]] == [(d.tokens, d.logprob, d.abstain_logprob) for d in runs[1]]


def test_a_row_that_fails_during_a_step_fails_alone(tiny) -> None:
    """A constraint (or a streaming callback) that raises after the first token ends its own row; the others go on."""
    model, tok, kind = tiny
    eng = batching.DecodeEngine(model, max_rows=3).start()
    texts = _texts(tok, 3, seed=23)

    class LaterBroken:
        def allowed(self, generated: list[int]) -> list[int]:
            if len(generated) >= 2:
                raise ValueError("broken later")
            return list(range(model.config.vocab_size))

    try:
        specs = [G.RowSpec(G.encode_prompt(tok, kind, t), 6, tok.eos_token_id) for t in texts]
        specs[1] = G.RowSpec(specs[1].prompt, 6, tok.eos_token_id, constraint=LaterBroken())
        futures = eng.submit(specs)
        with pytest.raises(ValueError, match="broken later"):
            futures[1].result(30)
        got = [tok.decode(futures[i].result(30).tokens, skip_special_tokens=True).strip() for i in (0, 2)]
        assert got == _alone(model, tok, kind, [texts[0], texts[2]], max_new_tokens=6)
    finally:
        eng.stop()


def test_a_cancelled_row_leaves_at_the_next_step_and_one_cancelled_while_waiting_is_never_read(tiny) -> None:
    """serve's hung-up clients: ``cancel_scope``'s check is read into each RowSpec made in its block; once it says
    True, the row leaves between two steps (its caller gets DecodeCancelled) and the others decode as they would alone."""
    model, tok, kind = tiny
    eng = batching.DecodeEngine(model, max_rows=3).start()
    texts = _texts(tok, 3, seed=29)
    hung_up = threading.Event()
    tokens: list[int] = []

    def on_token(token: int) -> None:
        tokens.append(token)
        if len(tokens) == 3:
            hung_up.set()

    try:
        with G.cancel_scope(hung_up.is_set):
            doomed = G.RowSpec(G.encode_prompt(tok, kind, texts[1]), 200, tok.eos_token_id, on_token=on_token)
        assert doomed.cancelled is not None and G.RowSpec([1], 1, 0).cancelled is None  # outside the block: no check
        specs = [G.RowSpec(G.encode_prompt(tok, kind, t), 6, tok.eos_token_id) for t in texts]
        specs[1] = doomed
        futures = eng.submit(specs)
        with pytest.raises(G.DecodeCancelled):
            futures[1].result(30)
        assert len(tokens) == 3  # dropped at the step after its check turned True, not decoded to its 200 tokens
        got = [tok.decode(futures[i].result(30).tokens, skip_special_tokens=True).strip() for i in (0, 2)]
        assert got == _alone(model, tok, kind, [texts[0], texts[2]], max_new_tokens=6)
        rows, steps = eng.stats.rows, eng.stats.steps
        with G.cancel_scope(lambda: True):
            late = eng.submit([G.RowSpec(G.encode_prompt(tok, kind, texts[0]), 6, tok.eos_token_id)])[0]
        with pytest.raises(G.DecodeCancelled):
            late.result(30)
        assert (eng.stats.rows, eng.stats.steps) == (rows, steps)  # its prompt was never read
    finally:
        eng.stop()


def _taking(row: batching._Row, tokens: list[int], vocab: int = 16) -> None:
    """Feed ``row`` these tokens as its choices (one-hot logits)."""
    for t in tokens:
        logits = torch.full((vocab,), -torch.inf)
        logits[t] = 0.0
        row.take(logits)


def test_prompt_lookup_guesses_what_followed_the_longest_then_latest_match() -> None:
    from concurrent.futures import Future

    prompt = [5, 1, 2, 3, 4, 9, 2, 3, 8, 1, 2]
    row = batching._Row(G.RowSpec(prompt, 10, 0), Future(), [])
    assert row.draft(3) == []  # nothing decoded yet: the first token is the prompt read's
    _taking(row, [3])  # the text ends "1 2 3": after "2 3" at 6-7 came "8 1 2", after "1 2 3" at 1-3 came "4 9 2"
    assert row.draft(3) == [4, 9, 2]
    assert row.draft(1) == [4] and row.draft(0) == []
    _taking(row, [7])  # "7" stands nowhere else
    assert row.draft(3) == []
    short = batching._Row(G.RowSpec(prompt, 3, 0), Future(), [])
    _taking(short, [3])
    assert short.draft(3) == [4]  # two tokens left to take: one guess and the token after it
    sampled = batching._Row(G.RowSpec(prompt, 10, 0, sample=(1.0, 1.0, 0)), Future(), [])
    _taking(sampled, [3])
    assert sampled.draft(3) == []  # greedy rows only: a sample is not checked against a guess
    with pytest.raises(ValueError, match="draft_tokens"):
        batching.DecodeEngine(torch.nn.Linear(1, 1), draft_tokens=-1)


@pytest.mark.parametrize("lean", [True, False])
def test_rows_checking_guesses_decode_what_they_decode_one_token_a_step(tiny, lean: bool) -> None:
    """Grounded rows copy spans of their passages, so prompt lookup's guesses are often right and rows advance by
    several tokens a step, by different numbers in one batch (joining and leaving): every token equals the one-token
    steps', every log-probability and margin agrees (float32), and steps are saved."""
    from rag_pipeline.answer.grounded import GroundedConstraint

    model, tok, kind = tiny
    rows = raft_rows(6, seed=8)
    specs = [G.RowSpec(G.encode_prompt(tok, kind, to_model_text(tok, TEMPLATE, r["prompt"])), 14, tok.eos_token_id,
                       constraint=GroundedConstraint(tok, [d["text"] for d in r["documents"]]), ban_first=[5],
                       abstain=[5, 6, tok.eos_token_id]) for r in rows]
    (one, one_stats), (guessed, guessed_stats) = (_decoded_by(model, specs, lean, draft) for draft in (0, 4))
    assert [d.tokens for d in guessed] == [d.tokens for d in one]
    assert [d.logprob for d in guessed] == pytest.approx([d.logprob for d in one], abs=1e-4)
    assert [d.abstain_logprob for d in guessed] == [d.abstain_logprob for d in one]
    assert one_stats.drafted == 0 and guessed_stats.accepted > 0
    assert guessed_stats.steps < one_stats.steps


def test_an_engine_never_started_decodes_in_the_calling_thread(tiny) -> None:
    """ask's own engine: no thread of its own (torch's work stays on the caller's thread), rows still sharing steps
    up to max_rows, the answers generate's; once stopped it refuses."""
    model, tok, kind = tiny
    texts = _texts(tok, 4, seed=13)
    eng = batching.DecodeEngine(model, max_rows=2, draft_tokens=3)
    threads = []
    specs = [G.RowSpec(G.encode_prompt(tok, kind, t), 6, tok.eos_token_id, on_token=lambda _: threads.append(threading.current_thread()))
             for t in texts]
    got = eng.run(specs)
    assert [tok.decode(d.tokens, skip_special_tokens=True).strip() for d in got] == _alone(model, tok, kind, texts, max_new_tokens=6)
    assert threads and set(threads) == {threading.current_thread()}
    assert eng.stats.largest == 2 and eng.stats.rows == 4
    eng.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        eng.run(specs)


def test_an_interrupted_call_leaves_no_row_for_the_next_one(tiny) -> None:
    """A KeyboardInterrupt from a row's callback on a never-started engine: raised, and the next call decodes only
    its own rows."""
    model, tok, kind = tiny
    texts = _texts(tok, 2, seed=17)
    eng = batching.DecodeEngine(model, max_rows=2, draft_tokens=2)

    def interrupt(_token: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        eng.run([G.RowSpec(G.encode_prompt(tok, kind, texts[0]), 8, tok.eos_token_id, on_token=interrupt)])
    got = eng.run([G.RowSpec(G.encode_prompt(tok, kind, texts[1]), 6, tok.eos_token_id)])
    assert tok.decode(got[0].tokens, skip_special_tokens=True).strip() == _alone(model, tok, kind, texts[1:], max_new_tokens=6)[0]
    assert not eng._rows and eng.call(lambda: threading.current_thread()) is threading.current_thread()
