"""The CUDA paths, on tiny models built in code: LoRA with bf16 autocast, an exact resume with
dropout (the GPU's random generator is checkpointed), QLoRA on a 4-bit base, greedy and
constrained decoding, continuous batching, and fp16 embedding. Each test skips without CUDA; QLoRA also without
bitsandbytes, FAISS on the GPU without a GPU build of faiss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE

from rag_pipeline import train as T  # noqa: E402
from rag_pipeline.generator import generate_answers, generate_with_margins, load_generator  # noqa: E402

try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.tiny_models import build_tiny_llama, build_tiny_tokenizer, write_raft_dataset
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_tokenizer, write_raft_dataset  # type: ignore[no-redef]

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FAST = dict(batch_size=4, grad_accum=2, learning_rate=2e-2, eval_subset=4, max_new_tokens=4, progress=False, device="cuda")
PROMPTS = ["The cat near the river is", "What colour is the sky?", "Count the owls.", "Where does the fox sleep?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-gpu")
    # hidden 64: bitsandbytes quantizes in blocks of 64 weights
    return {"llama": build_tiny_llama(root / "llama", hidden=64), "data": write_raft_dataset(root / "raft", n_train=24, n_val=4, n_test=2)}


def cfg(tiny: dict, out: Path, **kw: object) -> T.TrainConfig:
    return T.TrainConfig(dataset=str(tiny["data"]), output=str(out), base_model=str(tiny["llama"]), **{**FAST, **kw})


def logits(model: object, text: str = PROMPTS[0]) -> torch.Tensor:
    tok = build_tiny_tokenizer(chat=True)
    ids = tok(text, return_tensors="pt").to(next(model.parameters()).device)  # type: ignore[attr-defined]
    with torch.no_grad():
        return model(**ids).logits.float().cpu()  # type: ignore[operator]


def test_lora_with_bf16_autocast_learns_and_the_adapter_answers_the_same_on_the_cpu(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    summary = T.run(cfg(tiny, out, max_steps=8, eval_steps=4, bf16="true"))
    assert summary["status"] == "finished" and summary["device"].startswith("cuda") and summary["bf16"] is True
    assert summary["tuned"]["val_loss"] < summary["base"]["val_loss"] - 0.3
    gpu, _, _ = load_generator(str(tiny["llama"]), adapter_dir=out, device="cuda")
    cpu, _, _ = load_generator(str(tiny["llama"]), adapter_dir=out, device="cpu")
    base, _, _ = load_generator(str(tiny["llama"]), device="cpu")
    torch.testing.assert_close(logits(gpu), logits(cpu), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(logits(cpu), logits(base), atol=1e-2)  # the adapter trained on the GPU does something


def test_resume_with_dropout_on_cuda_ends_where_the_uninterrupted_run_ends(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(max_steps=6, eval_steps=2, lora_dropout=0.3, bf16="false")
    whole = T.run(cfg(tiny, tmp_path / "whole", **kw))

    def ctrl_c(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_on_step", ctrl_c)
    assert T.run(cfg(tiny, tmp_path / "cut", **kw))["status"] == "interrupted"
    monkeypatch.setattr(T, "_on_step", lambda step: None)
    torch.cuda.manual_seed_all(12345)  # whatever the GPU's generator holds now, the checkpoint's state replaces it
    resumed = T.run(cfg(tiny, tmp_path / "cut", resume=True, **kw))
    assert resumed["steps"] == whole["steps"] == 6
    hist = lambda d: [h["loss"] for h in json.loads((d / "checkpoints" / "last" / "state.json").read_text())["history"]]  # noqa: E731
    assert hist(tmp_path / "cut") == pytest.approx(hist(tmp_path / "whole"), rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "whole", tmp_path / "cut"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    rng = torch.load(tmp_path / "cut" / "checkpoints" / "last" / "rng.pt", weights_only=True)
    assert set(rng) == {"cpu", "cuda"}  # dropout on the GPU draws from the GPU's generator


def test_qlora_trains_on_a_4bit_base_and_the_adapter_loads_on_a_full_precision_cpu_base(tiny: dict, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    summary = T.run(cfg(tiny, out, method="qlora", max_steps=8, eval_steps=4))
    assert summary["status"] == "finished" and summary["device"].startswith("cuda")
    assert summary["tuned"]["val_loss"] < summary["base"]["val_loss"] - 0.1
    meta = json.loads((out / "rag_pipeline.json").read_text())
    assert meta["method"] == "qlora" and meta["base_model"] == str(tiny["llama"])
    cpu, _, _ = load_generator(str(tiny["llama"]), adapter_dir=out, device="cpu")  # what ask does on a CPU machine
    base, _, _ = load_generator(str(tiny["llama"]), device="cpu")
    assert not torch.allclose(logits(cpu), logits(base), atol=1e-2)


def test_greedy_margins_and_json_decoding_on_cuda_match_the_cpu(tiny: dict) -> None:
    from rag_pipeline.answer import structured

    tok = build_tiny_tokenizer(chat=True)
    gpu, _, kind = load_generator(str(tiny["llama"]), device="cuda")
    cpu, _, _ = load_generator(str(tiny["llama"]), device="cpu")
    assert next(gpu.parameters()).device.type == "cuda"
    greedy = [generate_answers(m, tok, kind, PROMPTS, max_new_tokens=12, batch_size=2) for m in (gpu, cpu)]
    assert greedy[0] == greedy[1]
    margins = [generate_with_margins(m, tok, kind, PROMPTS, "The passages do not say.", max_new_tokens=12, batch_size=2) for m in (gpu, cpu)]
    assert [a for a, _ in margins[0]] == [a for a, _ in margins[1]]
    assert [m for _, m in margins[0]] == pytest.approx([m for _, m in margins[1]], abs=1e-3)
    schema = structured.canonical({"type": "object", "properties": {"colour": {"type": "string", "maxLength": 4}}, "required": ["colour"],
                                    "additionalProperties": False})
    json_out = [generate_answers(m, tok, kind, PROMPTS, max_new_tokens=64, batch_size=2,
                                 constraints=[structured.json_constraint(tok, schema) for _ in PROMPTS]) for m in (gpu, cpu)]
    assert json_out[0] == json_out[1] and all("colour" in json.loads(o) for o in json_out[0])


@pytest.mark.parametrize("draft_tokens", [0, 4])
def test_continuous_batching_on_cuda_decodes_what_the_cpu_decodes_alone(tiny: dict, draft_tokens: int) -> None:
    from rag_pipeline.batching import DecodeEngine

    tok = build_tiny_tokenizer(chat=True)
    gpu, _, kind = load_generator(str(tiny["llama"]), device="cuda")
    cpu, _, _ = load_generator(str(tiny["llama"]), device="cpu")
    engine = DecodeEngine(gpu, max_rows=2, draft_tokens=draft_tokens).start()  # with prompt lookup's guesses checked, too
    try:
        got = generate_answers(gpu, tok, kind, PROMPTS, max_new_tokens=12, engine=engine)
        margins = generate_with_margins(gpu, tok, kind, PROMPTS, "The passages do not say.", max_new_tokens=12, engine=engine)
    finally:
        engine.stop()
    assert got == [generate_answers(cpu, tok, kind, [p], max_new_tokens=12)[0] for p in PROMPTS]
    want = generate_with_margins(cpu, tok, kind, PROMPTS, "The passages do not say.", max_new_tokens=12, batch_size=1)
    assert [a for a, _ in margins] == [a for a, _ in want]
    assert [m for _, m in margins] == pytest.approx([m for _, m in want], abs=1e-3)


def test_fp16_embedding_on_cuda_ranks_as_the_cpu_does(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    from rag_pipeline.index.embed import SentenceTransformerEmbedder

    tok = build_tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=256))
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    word = models.Transformer(str(tmp_path / "bert"), max_seq_length=128)
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")]).save(str(tmp_path / "st"))
    texts = PROMPTS + ["The owls sleep in the barn.", "The sky is blue over the river.", "A fox counts cats."]
    gpu = SentenceTransformerEmbedder(str(tmp_path / "st"), device="cuda")
    cpu = SentenceTransformerEmbedder(str(tmp_path / "st"), device="cpu")
    assert next(gpu.model.parameters()).dtype == torch.float16
    a, b = gpu.encode(texts), cpu.encode(texts)
    assert a.shape == b.shape and (a * b).sum(1).min() > 0.999  # the same unit vectors within fp16's precision
    assert ((a @ a.T).argsort(1)[:, -2] == (b @ b.T).argsort(1)[:, -2]).all()  # the same nearest neighbours


def test_faiss_on_the_gpu_searches_as_the_cpu_index_does() -> None:
    pytest.importorskip("faiss")
    from rag_pipeline.index import ann
    from rag_pipeline.index.build import faiss_gpu_available

    if not faiss_gpu_available():
        pytest.skip("faiss has no GPU build here (pip install 'rag-pipeline[gpu]')")
    import faiss
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2000, 32)).astype("float32")
    for cpu in (faiss.IndexFlatIP(32), faiss.index_factory(32, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)):
        assert ann.gpu_clonable(cpu)
        cpu.train(x)
        gpu = faiss.index_cpu_to_all_gpus(cpu)  # what build-index does with --device auto on a GPU machine
        gpu.add(x)
        back = faiss.index_gpu_to_cpu(gpu)
        cpu.add(x)
        if hasattr(cpu, "nprobe"):
            faiss.extract_index_ivf(back).nprobe = cpu.nprobe = 16
        assert (back.search(x[:20], 5)[1] == cpu.search(x[:20], 5)[1]).all()
