"""rag_pipeline.inference: prepacked and fused bf16 projections give bitwise the plain model's numbers."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE

from rag_pipeline import generator as G  # noqa: E402
from rag_pipeline import inference  # noqa: E402
from rag_pipeline.prompt import get_template, to_model_text  # noqa: E402

try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.tiny_models import build_tiny_llama, build_tiny_t5, make_adapter, raft_rows
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_t5, make_adapter, raft_rows  # type: ignore[no-redef]

needs_packing = pytest.mark.skipif(not inference.packing_available(), reason="this torch has no oneDNN packed linear")


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-inference") / "llama", hidden=64)
    return G.load_generator(str(path), device="cpu", dtype="bfloat16")


def _texts(tok: object, n: int) -> list[str]:
    texts = [to_model_text(tok, get_template("raft-v1"), r["prompt"]) for r in raft_rows(n, seed=5)]
    texts[1] = texts[1].replace("near the river", "")  # rows of different lengths: a padded batch
    return texts


@needs_packing
def test_prepared_model_gives_bitwise_the_plain_logits_and_answers(bf16_llama: tuple) -> None:
    model, tok, kind = bf16_llama
    plain, fast = copy.deepcopy(model), copy.deepcopy(model)
    said = inference.prepare(fast)
    assert said == "oneDNN-packed bf16 weights (5 linears, 4 fused projection groups)"  # o, down (2 layers), the head; q+k+v, gate+up
    names = {type(m).__name__ for m in fast.modules()}
    assert "Linear" not in names  # every bf16 linear went: packed alone or in a fused group
    texts = _texts(tok, 4)
    ids, mask = G.pad([G.encode_prompt(tok, kind, t) for t in texts], tok.pad_token_id, "left")
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids, attention_mask=mask).logits, fast(input_ids=ids, attention_mask=mask).logits)
    for static in (False, True):
        assert (G.generate_answers(plain, tok, kind, texts, max_new_tokens=8, batch_size=4, static=static)
                == G.generate_answers(fast, tok, kind, texts, max_new_tokens=8, batch_size=4, static=static))


@needs_packing
def test_fused_parts_called_with_other_inputs_recompute(bf16_llama: tuple) -> None:
    model, _, _ = bf16_llama
    attn = model.model.layers[0].self_attn
    linears = [copy.deepcopy(attn.q_proj), copy.deepcopy(attn.k_proj), copy.deepcopy(attn.v_proj)]
    fused = inference.FusedProjections(linears)
    x, y = torch.randn(3, 64, dtype=torch.bfloat16), torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        want = {(name, i): lin(t) for i, t in enumerate((x, y)) for name, lin in zip("qkv", linears)}
        # interleaved inputs, a part asked twice, out of order: each answer is its own projection of its input
        for name, t in (("q", x), ("k", y), ("k", y), ("v", x), ("q", y), ("v", y), ("k", x)):
            got = fused.part("qkv".index(name), t)
            assert torch.equal(got, want[(name, 0 if t is x else 1)])


def test_encoder_decoders_are_left_as_they_are(tmp_path) -> None:
    t5, _, _ = G.load_generator(str(build_tiny_t5(tmp_path / "t5")), device="cpu", dtype="bfloat16")
    assert inference.prepare(t5) == ""  # T5 reads its linears' weights outside them
    assert sum(type(m) is torch.nn.Linear for m in t5.modules()) > 0


def test_an_unmerged_peft_adapter_is_left_as_it_is(tmp_path) -> None:
    base = build_tiny_llama(tmp_path / "llama")
    model, _, _ = G.load_generator(str(base), make_adapter(base, tmp_path / "adapter"), device="cpu", dtype="bfloat16")
    assert inference.prepare(model) == ""  # peft's LoRA layers read their base layer's weight
    merged, _, _ = G.load_generator(str(base), tmp_path / "adapter", device="cpu", dtype="bfloat16", merge=True)
    assert inference.prepare(merged) != "" or not inference.packing_available()


@needs_packing
def test_each_thread_keeps_its_own_pending_product(bf16_llama: tuple) -> None:
    import threading

    attn = bf16_llama[0].model.layers[1].self_attn
    linears = [copy.deepcopy(attn.q_proj), copy.deepcopy(attn.k_proj), copy.deepcopy(attn.v_proj)]
    fused = inference.FusedProjections(linears)
    computed = []
    product = fused.product
    fused.product = lambda x: computed.append(x) or product(x)
    xs = [torch.randn(2, 64, dtype=torch.bfloat16) for _ in range(2)]
    first_done, second_done, got = threading.Event(), threading.Event(), {}

    def worker(t: int) -> None:
        with torch.no_grad():
            if t == 1:
                first_done.wait()
            got[(t, 0)] = fused.part(0, xs[t])  # thread 0's pending product, then thread 1's, then thread 0 finishes its own
            if t == 0:
                first_done.set()
                second_done.wait()
            got[(t, 1)], got[(t, 2)] = fused.part(1, xs[t]), fused.part(2, xs[t])
            if t == 1:
                second_done.set()

    threads = [threading.Thread(target=worker, args=(t,)) for t in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    with torch.no_grad():
        for (t, i), out in got.items():
            assert torch.equal(out, linears[i](xs[t]))
    assert len(got) == 6
    assert len(computed) == 2  # one product per input: thread 1's did not replace thread 0's pending one


def test_float32_models_are_left_as_they_are(tmp_path) -> None:
    model, _, _ = G.load_generator(str(build_tiny_llama(tmp_path / "llama")), device="cpu", dtype="float32")
    assert inference.prepare(model) == ""
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 2 * 7 + 1  # 2 layers of 7 projections and the head


def test_generation_with_margins_has_room_for_the_abstention_in_a_static_cache(bf16_llama: tuple) -> None:
    model, tok, kind = bf16_llama
    texts = _texts(tok, 3)
    abstain = "The documents don't contain the answer at all, none of them."  # longer than the answers may be
    static = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=2, batch_size=3, static=True)
    dynamic = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=2, batch_size=3)
    assert [a for a, _ in static] == [a for a, _ in dynamic]
    assert [m for _, m in static] == pytest.approx([m for _, m in dynamic], abs=0.05)  # bf16: the masked attention's last bits
