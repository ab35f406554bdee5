"""rag_pipeline.generator and rag_pipeline.metrics, on tiny models built in code."""

from __future__ import annotations

import copy
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE

from rag_pipeline import generator as G  # noqa: E402
from rag_pipeline.errors import ConfigError, InputError  # noqa: E402
from rag_pipeline.metrics import exact_match, extract_answer, f1  # noqa: E402
from rag_pipeline.prompt import get_template, to_model_text  # noqa: E402
try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.tiny_models import build_tiny_llama, build_tiny_t5, raft_rows
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_t5, raft_rows  # type: ignore[no-redef]

TEMPLATE = get_template("raft-v1")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny-gen")
    return {"causal": build_tiny_llama(root / "llama"), "seq2seq": build_tiny_t5(root / "t5")}


@pytest.fixture(scope="session")
def loaded(tiny_dirs: dict) -> dict[str, tuple]:
    return {k: G.load_generator(str(p), device="cpu") for k, p in tiny_dirs.items()}


@pytest.fixture(params=["causal", "seq2seq"])
def gen(request: pytest.FixtureRequest, loaded: dict) -> tuple:
    model, tok, kind = loaded[request.param]
    return copy.deepcopy(model), tok, kind


def _texts(tok: object, n: int = 4) -> tuple[list[str], list[dict]]:
    rows = raft_rows(n, seed=3)
    return [to_model_text(tok, TEMPLATE, r["prompt"]) for r in rows], rows


def test_kind_is_read_from_the_config(loaded: dict) -> None:
    assert loaded["causal"][2] == "causal" and loaded["seq2seq"][2] == "seq2seq"
    assert loaded["causal"][1].padding_side == "left"


def test_encode_masks_the_prompt_and_ends_the_target_with_eos(gen: tuple) -> None:
    _, tok, kind = gen
    texts, rows = _texts(tok, 1)
    ex = G.encode_example(tok, kind, texts[0], rows[0]["completion"], 1024)
    target = [t for t in ex["labels"] if t != -100]
    assert tok.decode(target[:-1]) == rows[0]["completion"] and target[-1] == tok.eos_token_id
    assert ex["prompt_cut"] == 0
    if kind == "causal":
        n_prompt = len(ex["input_ids"]) - len(target)
        assert ex["labels"][:n_prompt] == [-100] * n_prompt and ex["input_ids"][n_prompt:] == target
        assert ex["input_ids"][:n_prompt] == G.encode_prompt(tok, kind, texts[0])
    else:
        assert ex["labels"] == target and ex["input_ids"] == G.encode_prompt(tok, kind, texts[0])


def test_long_prompt_is_cut_in_the_middle_never_the_target(gen: tuple) -> None:
    _, tok, kind = gen
    texts, rows = _texts(tok, 1)
    full = G.encode_prompt(tok, kind, texts[0])
    ex = G.encode_example(tok, kind, texts[0], rows[0]["completion"], 64)
    assert len(ex["input_ids"]) <= 64 and ex["prompt_cut"] > 0
    target = [t for t in ex["labels"] if t != -100]
    assert tok.decode(target[:-1]) == rows[0]["completion"]
    prompt = ex["input_ids"][: len(ex["input_ids"]) - len(target)] if kind == "causal" else ex["input_ids"]
    assert len(prompt) + ex["prompt_cut"] == len(full)
    head = len(prompt) // 4
    assert prompt[:head] == full[:head] and prompt[head:] == full[len(full) - (len(prompt) - head):]


def test_completion_longer_than_max_length_is_an_input_error(gen: tuple) -> None:
    _, tok, kind = gen
    with pytest.raises(InputError, match="--max-length"):
        G.encode_example(tok, kind, "question", "word " * 100, 40)


def test_loss_is_the_reference_mean_over_completion_tokens_only(gen: tuple) -> None:
    model, tok, kind = gen
    texts, rows = _texts(tok, 3)
    exs = [G.encode_example(tok, kind, t, r["completion"] * (i + 1), 1024) for i, (t, r) in enumerate(zip(texts, rows))]
    batch = G.collate(exs, tok.pad_token_id, kind)
    loss_sum, n = G.batch_loss(model, batch, kind)
    assert n == sum(sum(t != -100 for t in e["labels"]) for e in exs)
    ref = model(**{k: v for k, v in batch.items()}).loss  # transformers' own shifted, masked mean
    torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-5)
    # Changing prompt tokens' labels to anything masked changes nothing: the prompt carries no loss.
    if kind == "causal":
        assert int((batch["labels"][batch["attention_mask"] == 0] != -100).sum()) == 0


def test_left_padded_batch_generation_equals_one_by_one(gen: tuple) -> None:
    model, tok, kind = gen
    texts, _ = _texts(tok, 4)
    texts[1] = texts[1].replace("near the river", "")  # different lengths, so padding happens
    batched = G.generate_answers(model, tok, kind, texts, max_new_tokens=6, batch_size=4)
    single = [G.generate_answers(model, tok, kind, [t], max_new_tokens=6)[0] for t in texts]
    assert batched == single


def test_sampling_and_beams_run_and_sampling_is_seeded(gen: tuple) -> None:
    model, tok, kind = gen
    texts, _ = _texts(tok, 2)
    a = G.generate_answers(model, tok, kind, texts, max_new_tokens=4, do_sample=True, seed=1, temperature=2.0)
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    b = G.generate_answers(model, tok, kind, texts, max_new_tokens=4, do_sample=True, seed=1, temperature=2.0)
    assert a == b
    torch.testing.assert_close(torch.rand(3), expected)  # the caller's global stream is left where it was
    assert len(G.generate_answers(model, tok, kind, texts, max_new_tokens=4, num_beams=2)) == 2


def test_adapter_recorded_for_another_base_is_refused(tiny_dirs: dict, tmp_path: object) -> None:
    (tmp_path / "rag_pipeline.json").write_text(json.dumps({"base_model": "other/model", "base_weights_hash": "0" * 64}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")  # never read: the base check comes first
    with pytest.raises(ConfigError, match="trained on base model 'other/model'"):
        G.load_generator(str(tiny_dirs["causal"]), adapter_dir=tmp_path, device="cpu")


def test_unfinished_adapter_dir_is_an_input_error(tiny_dirs: dict, tmp_path: object) -> None:
    with pytest.raises(InputError, match="rag_pipeline.json"):
        G.load_generator(str(tiny_dirs["causal"]), adapter_dir=tmp_path, device="cpu")


def test_default_target_modules_and_unknown_architecture() -> None:
    assert G.default_target_modules("llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert G.default_target_modules("t5") == ["q", "k", "v", "o"]
    assert G.default_target_modules("bart") == ["q_proj", "k_proj", "v_proj", "out_proj"]
    with pytest.raises(ConfigError, match="--lora-target-modules"):
        G.default_target_modules("gpt9")


@pytest.mark.parametrize(
    "pred,golds,em,f",
    [
        ("Paris [1]", ["Paris"], 1.0, 1.0),
        ("the Eiffel tower", ["Eiffel Tower"], 1.0, 1.0),
        ("reasoning... ##Answer: blue [2]", ["blue"], 1.0, 1.0),
        ("red and blue", ["blue"], 0.0, 0.5),
        ("nothing", ["blue", "nothing at all"], 0.0, 0.5),
        ("The documents don't contain the answer.", [], 1.0, 1.0),
    ],
)
def test_squad_metrics(pred: str, golds: list[str], em: float, f: float) -> None:
    assert exact_match(pred, golds) == em
    assert f1(pred, golds) == pytest.approx(f)


def test_extract_answer_drops_citations() -> None:
    assert extract_answer("Blue [1, 3] and red [2].") == "Blue and red."


def _sequence_logprob(model, prompt_ids: list[int], cont: list[int], kind: str) -> float:
    """log P(cont | prompt) by one plain forward pass (the reference)."""
    if kind == "causal":
        ids = torch.tensor([prompt_ids + cont])
        lp = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float().log_softmax(-1)
    else:
        lp = model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([cont])).logits[0].float().log_softmax(-1)
    return float(lp.gather(-1, torch.tensor(cont).unsqueeze(-1)).sum())


def test_generate_with_margins_matches_plain_forward_passes(gen) -> None:
    model, tok, kind = gen
    texts = [to_model_text(tok, TEMPLATE, r["prompt"]) for r in raft_rows(5, seed=3)]
    abstain = "The documents don't contain the answer."
    got = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=6, batch_size=3)
    for text, (answer, margin) in zip(texts, got):
        prompt = G.encode_prompt(tok, kind, text)
        ab = tok(abstain, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():  # the same greedy answer, decoded alone with the abstention banned
            seq = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False, bad_words_ids=G.abstain_openings(tok, ab[:2]),
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        ans = seq[0, len(prompt):].tolist() if kind == "causal" else seq[0, 1:].tolist()
        ans = ans[: ans.index(tok.eos_token_id) + 1] if tok.eos_token_id in ans else ans
        assert tok.decode(ans, skip_special_tokens=True).strip() == answer
        with torch.no_grad():
            ref = _sequence_logprob(model, prompt, ab, kind) - _sequence_logprob(model, prompt, ans, kind)
        assert margin == pytest.approx(ref, abs=1e-3), (answer, margin, ref)


def test_generate_with_margins_decodes_a_reworded_refusal_again_with_its_opening_banned(gen) -> None:
    """A row whose best answer is still a refusal is decoded again with that answer's opening banned: the
    answer returned is the plain greedy decode under the extended ban, and the abstention's log-prob is unchanged."""
    model, tok, kind = gen
    texts = [to_model_text(tok, TEMPLATE, r["prompt"]) for r in raft_rows(4, seed=5)]
    abstain = "The documents don't contain the answer."
    plain = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=6, batch_size=4)
    refused = plain[-1][0]  # pretend this answer is a reworded refusal
    got = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=6, batch_size=4,
                                  is_refusal=lambda t: t == refused, max_refusal_retries=1)
    again = [i for i, (t, _) in enumerate(plain) if t == refused]
    assert [g for i, g in enumerate(got) if i not in again] == [p for i, p in enumerate(plain) if i not in again]
    ab = tok(abstain, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for j in again:
        prompt = G.encode_prompt(tok, kind, texts[j])

        def greedy(bad: list[list[int]]) -> list[int]:
            with torch.no_grad():
                seq = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False, bad_words_ids=bad,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            ans = seq[0, len(prompt):].tolist() if kind == "causal" else seq[0, 1:].tolist()
            return ans[: ans.index(tok.eos_token_id) + 1] if tok.eos_token_id in ans else ans

        first = greedy(G.abstain_openings(tok, ab[:2]))
        ans = greedy(G.abstain_openings(tok, ab[:2]) + [first[:2]])
        assert got[j][0] == tok.decode(ans, skip_special_tokens=True).strip() and ans[:2] != first[:2]
        with torch.no_grad():
            ref = _sequence_logprob(model, prompt, ab, kind) - _sequence_logprob(model, prompt, ans, kind)
        assert got[j][1] == pytest.approx(ref, abs=1e-3)


def test_ban_first_word_keeps_the_abstentions_first_token_off_the_answers_first_position(gen) -> None:
    """With ``ban_first_word`` the answer is the greedy decode with the abstention's first token banned at the
    answer's first position only; its margin is still the plain forward passes' difference."""
    from transformers import LogitsProcessorList

    model, tok, kind = gen
    texts = [to_model_text(tok, TEMPLATE, r["prompt"]) for r in raft_rows(6, seed=3)]
    prompt = G.encode_prompt(tok, kind, texts[0])
    with torch.no_grad():  # the first token of the first text's greedy answer
        opener = int(model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=1, do_sample=False,
                                    pad_token_id=tok.pad_token_id)[0, -1])
    abstain = tok.decode([opener]) + " nothing here."  # a refusal that opens as the first plain answer does
    plain = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=6, batch_size=3)
    got = G.generate_with_margins(model, tok, kind, texts, abstain, max_new_tokens=6, batch_size=3, ban_first_word=True)
    ab = tok(abstain, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ab[0] == opener and got != plain
    for text, (answer, margin) in zip(texts, got):
        prompt = G.encode_prompt(tok, kind, text)
        start = len(prompt) if kind == "causal" else 1
        with torch.no_grad():
            seq = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False, bad_words_ids=G.abstain_openings(tok, ab[:2]),
                                 logits_processor=LogitsProcessorList([G.BanAtStart(start, [opener])]),
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        ans = seq[0, len(prompt):].tolist() if kind == "causal" else seq[0, 1:].tolist()
        ans = ans[: ans.index(tok.eos_token_id) + 1] if tok.eos_token_id in ans else ans
        assert ans[0] != opener and tok.decode(ans, skip_special_tokens=True).strip() == answer
        with torch.no_grad():
            ref = _sequence_logprob(model, prompt, ab, kind) - _sequence_logprob(model, prompt, ans, kind)
        assert margin == pytest.approx(ref, abs=1e-3)


def test_ban_at_start_bans_only_the_first_position_and_never_every_token() -> None:
    ban = G.BanAtStart(3, [1, 2])
    scores = torch.tensor([[0.5, 2.0, 1.0, 0.25], [-torch.inf, 1.0, 0.0, -torch.inf]])
    out = ban(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out[0].tolist() == [0.5, -torch.inf, -torch.inf, 0.25]
    assert out[1].tolist() == scores[1].tolist()  # a constraint allows only banned tokens: they stay allowed
    assert ban(torch.zeros(2, 4, dtype=torch.long), scores) is scores  # later positions are untouched


def test_pad_left_and_right() -> None:
    ids, mask = G.pad([[5, 6, 7], [8]], 0, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]] and ids.dtype == torch.long
    ids, mask = G.pad([[5, 6, 7], [8]], -100, "right")
    assert ids.tolist() == [[5, 6, 7], [8, -100, -100]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_pads_causal_left_with_positions_and_seq2seq_right() -> None:
    exs = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    b = G.collate(exs, 0, "causal")
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]] and b["labels"].tolist() == [[-100, 2, 3], [-100, -100, 4]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]] and b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    s = G.collate([{"input_ids": [1, 2], "labels": [7]}, {"input_ids": [3], "labels": [8, 9]}], 0, "seq2seq")
    assert s["input_ids"].tolist() == [[1, 2], [3, 0]] and s["labels"].tolist() == [[7, -100], [8, 9]] and "position_ids" not in s


def test_load_model_picks_the_auto_class_by_kind(tiny_dirs: dict) -> None:
    causal, kind = G.load_model(tiny_dirs["causal"])
    assert kind == "causal" and causal.config.model_type == "llama" and next(causal.parameters()).dtype == torch.float32
    t5, kind = G.load_model(tiny_dirs["seq2seq"], "bfloat16")
    assert kind == "seq2seq" and t5.config.is_encoder_decoder and next(t5.parameters()).dtype == torch.bfloat16
