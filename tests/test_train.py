"""train-generator on tiny models built in code: learning, saving, resuming, bad input, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after HF_HUB_OFFLINE

from rag_pipeline import train as T  # noqa: E402
from rag_pipeline.config import build_config  # noqa: E402
from rag_pipeline.errors import ConfigError, DeviceError, InputError  # noqa: E402
from rag_pipeline.generator import load_generator, load_model  # noqa: E402

try:  # tests/ as a package (tests/__init__.py) or as a plain directory on sys.path
    from tests.tiny_models import build_tiny_llama, build_tiny_t5, write_raft_dataset
except ImportError:
    from tiny_models import build_tiny_llama, build_tiny_t5, write_raft_dataset  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
FAST = dict(batch_size=4, grad_accum=2, learning_rate=2e-2, eval_subset=4, max_new_tokens=4, progress=False, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models run fastest on one thread (and the CI box is shared); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-train")
    return {
        "llama": build_tiny_llama(root / "llama"),
        "t5": build_tiny_t5(root / "t5"),
        "data": write_raft_dataset(root / "raft", n_train=24, n_val=4, n_test=2),
    }


def cfg(tiny: dict, out: Path, model: str = "llama", **kw: object) -> T.TrainConfig:
    return T.TrainConfig(dataset=str(tiny["data"]), output=str(out), base_model=str(tiny[model]), **{**FAST, **kw})


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture(scope="session")
def trained(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One LoRA run on the tiny Llama, shared by the read-only checks below."""
    out = tmp_path_factory.mktemp("run") / "out"
    summary = T.run(cfg(tiny, out, max_steps=8, eval_steps=4, merge=True, tensorboard=True, snapshots=True))
    return out, summary


def test_loss_falls_and_output_describes_itself(trained: tuple, tiny: dict) -> None:
    out, summary = trained
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert summary["tuned"]["val_loss"] < summary["base"]["val_loss"] - 0.3
    meta = json.loads((out / "rag_pipeline.json").read_text())
    from rag_pipeline.model_paths import weights_hash

    assert meta["base_model"] == str(tiny["llama"]) and meta["base_weights_hash"] == weights_hash(tiny["llama"])
    assert meta["template"] == "raft-v1" and meta["dataset_fingerprint"].startswith("tiny-")
    from rag_pipeline.prompt import TEMPLATES, template_text

    assert meta["template_text"] == template_text(TEMPLATES["raft-v1"])  # checked when ask loads the adapter
    assert meta["config"]["lora_r"] == 16 and meta["metrics"]["base"]["f1"] >= 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "adapter_config.json", "adapter_model.safetensors", "README.md", "rag_pipeline.json", "loss_curve.png",
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "merged", "checkpoints", "tensorboard", "snapshots",
    }
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best", "last"}
    from rag_pipeline.adapter_card import MARK, card_text
    from rag_pipeline.adapter_meta import read_adapter_meta

    assert (out / "README.md").read_text() == card_text(out, read_adapter_meta(out))  # the model card, not peft's template
    snapshot = read_adapter_meta(out / "snapshots" / "step-4")  # every evaluation's adapter, loadable, saying which step
    assert snapshot.snapshot_step == 4 and snapshot.metrics is None and len(snapshot.evals) == 2
    assert MARK in (out / "snapshots" / "step-4" / "README.md").read_text()
    assert any((out / "tensorboard").iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_base_weights_unchanged_and_lora_weights_changed(trained: tuple, tiny: dict) -> None:
    from transformers import AutoModelForCausalLM

    out, _ = trained
    weights = adapter_weights(out)
    assert weights and all("lora_" in k for k in weights)  # only LoRA weights were trained and saved
    assert all(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero
    trainable = torch.load(out / "checkpoints" / "last" / "trainable.pt", weights_only=True)
    assert trainable and all("lora_" in k for k in trainable)
    base = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    from peft import PeftModel

    peft = PeftModel.from_pretrained(base, str(out))
    for name, p in fresh.named_parameters():  # the base inside the adapter model equals the untouched base
        q = peft.get_base_model().get_parameter(name.replace(".weight", ".base_layer.weight")) if "proj" in name and any(
            f"{m}." in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")) else peft.get_base_model().get_parameter(name)
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_plain_peft_loads_the_adapter_to_the_same_logits(trained: tuple, tiny: dict) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = trained
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("The cat near the river is", return_tensors="pt")
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny["llama"])), str(out)).eval()
    ours, _, kind = load_generator(str(tiny["llama"]), adapter_dir=out, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny["llama"])).eval()
    with torch.no_grad():
        a, b, c, d = (m(**ids).logits for m in (plain, ours, merged, base))
    assert kind == "causal"
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, d, atol=1e-3)  # the adapter does something


def test_resume_after_ctrl_c_ends_where_the_uninterrupted_run_ends(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(max_steps=6, eval_steps=2, lora_dropout=0.1)
    whole = T.run(cfg(tiny, tmp_path / "whole", **kw))

    def ctrl_c(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_on_step", ctrl_c)
    first = T.run(cfg(tiny, tmp_path / "cut", **kw))
    assert first["status"] == "interrupted" and first["step"] == 3
    assert not (tmp_path / "cut" / "rag_pipeline.json").exists()
    with pytest.raises(InputError, match="--resume"):
        T.run(cfg(tiny, tmp_path / "cut", **kw))
    monkeypatch.setattr(T, "_on_step", lambda step: None)
    resumed = T.run(cfg(tiny, tmp_path / "cut", resume=True, **kw))
    assert resumed["steps"] == whole["steps"] == 6
    hist = lambda d: [h["loss"] for h in json.loads((d / "checkpoints" / "last" / "state.json").read_text())["history"]]  # noqa: E731
    assert hist(tmp_path / "cut") == pytest.approx(hist(tmp_path / "whole"), rel=1e-5)
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert resumed["tuned"] == pytest.approx(whole["tuned"], rel=1e-5)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_an_ignored_sigint_stop_training_as_ctrl_c_does(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    sig: str) -> None:
    """kill (SIGTERM), or SIGINT to a run that a shell started in the background with SIGINT ignored: a checkpoint
    of the last completed step, resumable; the process's own handlers come back afterwards."""
    import signal

    number = getattr(signal, sig)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if sig == "SIGINT" else signal.getsignal(number)
    try:
        monkeypatch.setattr(T, "_on_step", lambda step: os.kill(os.getpid(), number) if step == 2 else None)
        first = T.run(cfg(tiny, tmp_path / "cut", max_steps=4, eval_steps=2))
        assert first["status"] == "interrupted" and first["step"] == 2
        assert (tmp_path / "cut" / "checkpoints" / "last" / "state.json").is_file()
        assert signal.getsignal(number) is (signal.SIG_IGN if sig == "SIGINT" else before)
        monkeypatch.setattr(T, "_on_step", lambda step: None)
        assert T.run(cfg(tiny, tmp_path / "cut", max_steps=4, eval_steps=2, resume=True))["steps"] == 4
    finally:
        signal.signal(signal.SIGINT, before) if sig == "SIGINT" else None


def test_an_ignored_sigint_while_loading_stops_the_run(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal before the first step (loading the model, the base's evaluation) stops the run with KeyboardInterrupt
    (the CLI's exit 130) instead of being lost, and the shell's SIG_IGN comes back."""
    import signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    real_setup = T.setup
    try:
        monkeypatch.setattr(T, "setup", lambda c: (os.kill(os.getpid(), signal.SIGINT), real_setup(c))[1])
        with pytest.raises(KeyboardInterrupt):
            T.run(cfg(tiny, tmp_path / "o", max_steps=4))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert not (tmp_path / "o" / "checkpoints" / "last").exists()
    finally:
        signal.signal(signal.SIGINT, before)


def test_resume_with_a_different_config_is_refused(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_on_step", lambda step: (_ for _ in ()).throw(KeyboardInterrupt))
    T.run(cfg(tiny, tmp_path / "o", max_steps=4))
    with pytest.raises(ConfigError, match="learning_rate"):
        T.run(cfg(tiny, tmp_path / "o", max_steps=4, resume=True, learning_rate=1e-3))


def test_seq2seq_t5_trains_and_reloads_with_plain_peft(tiny: dict, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "t5out"
    summary = T.run(cfg(tiny, out, model="t5", max_steps=8, eval_steps=8))
    assert summary["tuned"]["val_loss"] < summary["base"]["val_loss"] - 0.3
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] in (["q", "k", "v", "o"], ["k", "o", "q", "v"]) or set(
        json.loads((out / "adapter_config.json").read_text())["target_modules"]) == {"q", "k", "v", "o"}
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(tiny["t5"])), str(out))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_full_fine_tune_and_time_budget(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "full"
    summary = T.run(cfg(tiny, out, method="full", max_steps=50, max_minutes=1e-4, learning_rate=1e-3))
    assert summary["status"] == "time_budget" and summary["steps"] == 1
    model, tok, kind = load_generator(None, adapter_dir=out, device="cpu")
    assert kind == "causal" and not hasattr(model, "peft_config")


def test_full_fine_tune_of_the_last_layers_changes_only_them(tiny: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full-last"
    T.run(cfg(tiny, out, method="full", full_layers=1, max_steps=2, learning_rate=1e-2))
    before = AutoModelForCausalLM.from_pretrained(str(tiny["llama"])).state_dict()
    after = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    last = max(int(m.group(1)) for n in before if (m := T.LAYER_INDEX.search(n)))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(f"layers.{last}." in n or n == "model.norm.weight" for n in changed)
    assert any(f"layers.{last}.mlp" in n for n in changed)


def test_full_layers_and_base_dtype_are_checked(tiny: dict) -> None:
    with pytest.raises(ConfigError, match="pass --method full"):
        T.TrainConfig(full_layers=2)
    with pytest.raises(ConfigError, match="only LoRA"):
        T.TrainConfig(method="full", base_dtype="bfloat16")
    model, _ = load_model(tiny["llama"])
    with pytest.raises(ConfigError, match="numbered layers"):
        T.freeze_all_but_last_layers(model, 99)


@pytest.mark.parametrize("arch", ["bart", "t5", "gpt2"])
def test_the_last_layers_are_the_decoders_and_the_norm_after_them(arch: str) -> None:
    """Seq2seq models train the last decoder layers, never the encoder; each family's final norm is found."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    model = {"bart": lambda: BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=3, decoder_layers=2,
                                                                     encoder_attention_heads=2, decoder_attention_heads=2,
                                                                     encoder_ffn_dim=32, decoder_ffn_dim=32)),
             "t5": lambda: T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=3,
                                                               num_decoder_layers=2, num_heads=2)),
             "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2))}[arch]()
    T.freeze_all_but_last_layers(model, 1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    last = {"bart": "model.decoder.layers.1.", "t5": "decoder.block.1.", "gpt2": "transformer.h.2."}[arch]
    norm = {"bart": None, "t5": "decoder.final_layer_norm.", "gpt2": "transformer.ln_f."}[arch]
    assert trained and all(n.startswith(last) or n.startswith(str(norm)) for n in trained), sorted(trained)
    assert any(n.startswith(last) for n in trained) and (norm is None or norm + "weight" in trained)


def test_lora_on_a_bf16_base_keeps_the_adapter_in_float32(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "bf16-base"
    summary = T.run(cfg(tiny, out, base_dtype="bfloat16", max_steps=3, learning_rate=1e-3))
    assert summary["steps"] == 3
    model = T.setup_model(cfg(tiny, tmp_path / "x", base_dtype="bfloat16"), torch.device("cpu"))[0]
    dtypes = {("lora_" in n, p.dtype) for n, p in model.named_parameters() if n.endswith("q_proj.base_layer.weight") or "q_proj.lora_A" in n}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}  # the frozen base in bf16, the adapter in float32
    weights = adapter_weights(out)
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    assert any(float(w.abs().sum()) > 0 for n, w in weights.items() if "lora_B" in n)


def test_the_datasets_extract_schema_goes_into_the_adapter(tiny: dict, tmp_path: Path) -> None:
    from rag_pipeline.adapter_meta import read_adapter_meta

    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    own = {"type": "object", "properties": {"date": {"type": ["string", "null"]}}, "required": ["date"], "additionalProperties": False}
    (data / "manifest.json").write_text(json.dumps({**manifest, "extract_schema": own}))
    out = tmp_path / "with-schema"
    T.run(cfg({**tiny, "data": data}, out, max_steps=1))
    assert read_adapter_meta(out).extract_schema == own


def test_early_stopping_after_patience_evaluations_without_improvement(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: {"val_loss": 1.0, "em": 0.0, "f1": 0.0})
    summary = T.run(cfg(tiny, tmp_path / "es", max_steps=10, eval_steps=1, early_stopping_patience=2))
    assert summary["status"] == "early_stopped" and summary["steps"] == 3 and summary["best_step"] == 1


def _write_split(tmp_path: Path, rows: dict[str, list[dict]]) -> Path:
    from datasets import Dataset, DatasetDict

    d = tmp_path / "bad"
    DatasetDict({k: Dataset.from_list(v) if v else Dataset.from_dict({"id": [], "prompt": [], "completion": [], "answer": []})
                 for k, v in rows.items()}).save_to_disk(str(d / "dataset"))
    (d / "manifest.json").write_text(json.dumps({"kind": "raft-dataset", "template": "raft-v1", "fingerprint": "x"}))
    return d


def test_bad_datasets_are_one_line_input_errors(tiny: dict, tmp_path: Path) -> None:
    row = {"id": "a", "prompt": "p", "completion": "c", "answer": ["c"]}
    cases = [
        (tmp_path / "nowhere", "no manifest.json"),
        (_write_split(tmp_path / "1", {"train": [{"id": "a", "prompt": "p"}], "validation": [row]}), "lacks column"),
        (_write_split(tmp_path / "2", {"train": [], "validation": [row]}), "'train' is empty|empty or damaged"),
        (_write_split(tmp_path / "3", {"validation": [row]}), "missing 'train'"),
    ]  # a missing validation split is not an error: see test_hostile.py's empty-split tests
    for data, message in cases:
        with pytest.raises(InputError, match=message) as e:
            T.run(T.TrainConfig(dataset=str(data), output=str(tmp_path / "o"), base_model=str(tiny["llama"]), **FAST))
        assert "\n" not in str(e.value)


def test_bad_config_and_device_errors(tiny: dict, tmp_path: Path, trained: tuple) -> None:
    with pytest.raises(ConfigError, match="lora_r is 0"):
        cfg(tiny, tmp_path, lora_r=0)
    with pytest.raises(ConfigError, match="bf16"):
        cfg(tiny, tmp_path, bf16="maybe")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="use --method lora"):
            T.run(cfg(tiny, tmp_path / "q", method="qlora"))
        with pytest.raises(DeviceError, match="--device cpu"):
            T.run(cfg(tiny, tmp_path / "c", device="cuda"))
    with pytest.raises(InputError, match="already holds a trained generator"):
        T.run(cfg(tiny, trained[0]))
    with pytest.raises(ConfigError, match="do not fit"):
        T.run(cfg(tiny, tmp_path / "m", lora_target_modules=["nope"]))


def test_over_long_prompts_are_cut_and_counted(tiny: dict, tmp_path: Path) -> None:
    summary = T.run(cfg(tiny, tmp_path / "short", max_steps=1, max_length=48))
    assert summary["train_prompts_cut"] == 24


def test_micro_batches_are_length_grouped_seeded_and_sharded() -> None:
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    a = T.micro_batches(lengths, 2, seed=0, epoch=0)
    assert a == T.micro_batches(lengths, 2, seed=0, epoch=0) != T.micro_batches(lengths, 2, seed=0, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[1]]) <= 2 for b in a)  # similar lengths share a batch
    r0, r1 = T.micro_batches(lengths, 2, 0, 0, rank=0, world=2), T.micro_batches(lengths, 2, 0, 0, rank=1, world=2)
    assert len(r0) == len(r1) == 2 and not {i for b in r0 for i in b} & {i for b in r1 for i in b}


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("train*.yaml")), ids=lambda p: p.name)
def test_shipped_train_yamls_parse(path: Path) -> None:
    assert path.read_text().startswith("#") and "train-generator" in path.read_text().splitlines()[0]
    build_config(T.TrainConfig, path)


@pytest.mark.skipif(os.environ.get("RAG_PIPELINE_SKIP_DDP") == "1", reason="RAG_PIPELINE_SKIP_DDP=1")
def test_two_process_accelerate_launch_ddp(tiny: dict, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks CPU DDP; on a CUDA box --multi_gpu would use the GPUs")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    out = tmp_path / "ddp"
    # `--cpu --num_processes 2` would start ONE process (accelerate wants mpirun for that); `--multi_gpu`
    # starts torchrun, and on a machine without CUDA the Accelerator then runs DDP over gloo on CPU.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "rag_pipeline.train", "--device", "cpu", "--dataset", str(tiny["data"]),
           "--output", str(out), "--base-model", str(tiny["llama"]), "--max-steps", "4", "--eval-steps", "4",
           "--batch-size", "4", "--grad-accum", "1", "--learning-rate", "2e-2", "--eval-subset", "4",
           "--max-new-tokens", "4", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "rag_pipeline.json").read_text())
    assert meta["metrics"]["processes"] == 2 and meta["metrics"]["steps"] == 4
    assert meta["metrics"]["tuned"]["val_loss"] < meta["metrics"]["base"]["val_loss"]


@pytest.mark.integration
def test_real_smollm2_lora_few_steps(tmp_path: Path) -> None:
    data = write_raft_dataset(tmp_path / "raft", n_train=8, n_val=2, n_test=1, seed=5)
    summary = T.run(T.TrainConfig(dataset=str(data), output=str(tmp_path / "smol"), max_steps=2, batch_size=2,
                                  grad_accum=2, eval_subset=2, max_new_tokens=8, max_length=384, progress=False,
                                  learning_rate=1e-3, device="cpu"))
    assert summary["steps"] == 2 and summary["tuned"]["val_loss"] < summary["base"]["val_loss"]
    model, tok, kind = load_generator("HuggingFaceTB/SmolLM2-135M-Instruct", adapter_dir=tmp_path / "smol", device="cpu")
    assert kind == "causal"


# The keys of checkpoints/last/state.json since train_tokens was added; runs in progress resume from them.
STATE_KEYS = {"step", "history", "evals", "best", "bad_evals", "train_seconds", "train_examples", "train_target_tokens",
              "train_tokens", "config"}


def test_a_checkpoint_in_the_state_json_format_resumes(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint as train-generator has always written it (plain state.json, the five files) resumes to the
    uninterrupted result, also one from before ``train_tokens`` existed."""
    kw = dict(max_steps=4, eval_steps=2)
    whole = T.run(cfg(tiny, tmp_path / "whole", **kw))
    monkeypatch.setattr(T, "_on_step", lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 3 else None)
    assert T.run(cfg(tiny, tmp_path / "cut", **kw))["status"] == "interrupted"
    last = tmp_path / "cut" / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == sorted(T.CHECKPOINT_FILES)
    state = json.loads((last / "state.json").read_text())
    assert set(state) == STATE_KEYS and state["step"] == 3 and len(state["history"]) == 3
    assert set(state["history"][0]) == {"step", "loss", "lr", "rss_mb"} and [e["step"] for e in state["evals"]] == [0, 2]
    assert set(state["best"]) == {"step", "value", "val_loss"} and state["config"] == json.loads(json.dumps(T.to_dict(cfg(tiny, tmp_path / "cut", **kw))))
    del state["train_tokens"]  # as written before it was counted
    (last / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    monkeypatch.setattr(T, "_on_step", lambda step: None)
    resumed = T.run(cfg(tiny, tmp_path / "cut", resume=True, **kw))
    assert resumed["steps"] == 4 and resumed["tuned"] == pytest.approx(whole["tuned"], rel=1e-5)
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_main_prints_the_summary_and_returns_130_when_interrupted(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(T, "_on_step", lambda step: (_ for _ in ()).throw(KeyboardInterrupt))
    assert T.main(cfg(tiny, tmp_path / "i", max_steps=2)) == 130
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "interrupted" and "continue with --resume" in err


def test_main_given_arguments_parses_them_like_the_cli(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``from rag_pipeline.train import main; main(sys.argv[1:])`` launch lines keep working."""
    assert T.main(["--dataset", str(tiny["data"]), "--output", str(tmp_path / "o"), "--lora-r", "0"]) == 2
    assert "lora_r is 0" in capsys.readouterr().err


def test_dataset_with_another_template_text_is_refused(tiny: dict, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    from rag_pipeline.prompt import TEMPLATES, template_text

    (data / "manifest.json").write_text(json.dumps({**manifest, "template_text": {**template_text(TEMPLATES["raft-v1"]), "system": "Be brief."}}))
    with pytest.raises(ConfigError, match="records prompt template 'raft-v1' with another text.*differs in system"):
        T.run(T.TrainConfig(dataset=str(data), output=str(tmp_path / "o"), base_model=str(tiny["llama"]), **FAST))


def test_state_round_trips_through_its_dict() -> None:
    state = T.TrainState(step=3, history=[{"step": 1, "loss": 2.0, "lr": 0.1, "rss_mb": 1.0}], best={"step": 2, "value": 0.5, "val_loss": 1.0},
                         train_tokens=7, config={"seed": 0})
    assert set(state.to_dict()) == STATE_KEYS and T.TrainState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_init_adapter_starts_from_the_trained_weights_and_trains_them_further(trained: tuple, tiny: dict, tmp_path: Path) -> None:
    """--init-adapter: step 0 of the new run is the old adapter (same validation loss as where it
    ended, far below a fresh LoRA's), its rank and targets are the old adapter's, and training changes it."""
    old, summary = trained
    out = tmp_path / "more"
    more = T.run(cfg(tiny, out, max_steps=2, eval_steps=2, init_adapter=str(old), lora_r=4))
    assert more["base"]["val_loss"] == pytest.approx(summary["tuned"]["val_loss"], rel=1e-4)
    fresh = T.run(cfg(tiny, tmp_path / "fresh", max_steps=2, eval_steps=2))
    assert more["base"]["val_loss"] < fresh["base"]["val_loss"] - 0.3
    before, after = adapter_weights(old), adapter_weights(out)
    assert before.keys() == after.keys()  # rank 16 and the same targets, not --lora-r 4
    assert any(not torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((out / "rag_pipeline.json").read_text())
    assert meta["config"]["init_adapter"] == str(old)


def test_a_run_from_an_adapter_takes_its_own_lora_dropout(trained: tuple, tiny: dict, tmp_path: Path) -> None:
    """Dropout is a training setting: --lora-dropout 0 on an adapter trained with 0.05 removes the masks (no random
    numbers drawn in training), and the new adapter's config says 0; a positive value gives every LoRA module that dropout."""
    old, _ = trained
    c = cfg(tiny, tmp_path / "nodrop", max_steps=1, init_adapter=str(old), lora_dropout=0.0)
    model, *_ = T.setup_model(c, torch.device("cpu"))
    dropouts = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict) for d in m.lora_dropout.values()]
    assert dropouts and all(isinstance(d, torch.nn.Identity) for d in dropouts)
    assert json.loads((old / "adapter_config.json").read_text())["lora_dropout"] > 0
    T.set_lora_dropout(model, 0.2)
    assert all(isinstance(d, torch.nn.Dropout) and d.p == 0.2 for m in model.modules()
               if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict) for d in m.lora_dropout.values())
    T.run(c)
    assert json.loads((tmp_path / "nodrop" / "adapter_config.json").read_text())["lora_dropout"] == 0.0


def test_init_adapter_of_another_base_or_no_adapter_is_refused(trained: tuple, tiny: dict, tmp_path: Path) -> None:
    old, _ = trained
    with pytest.raises(InputError, match="no rag_pipeline.json|not a finished"):
        T.run(cfg(tiny, tmp_path / "a", max_steps=1, init_adapter=str(tmp_path)))
    with pytest.raises(InputError, match="was trained on .* pass --base-model"):
        T.run(cfg(tiny, tmp_path / "b", model="t5", max_steps=1, init_adapter=str(old)))


def test_adapter_config_lists_target_modules_sorted(trained: tuple) -> None:
    """peft writes target_modules in a set's order (it changes with PYTHONHASHSEED): sorted, the
    same inputs and seed give a byte-identical adapter_config.json."""
    out, _ = trained
    modules = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1


def test_sort_target_modules_rewrites_only_the_order(tmp_path: Path) -> None:
    config = {"peft_type": "LORA", "r": 16, "target_modules": ["v_proj", "q_proj", "o_proj", "k_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    T.sort_target_modules(tmp_path)
    text = (tmp_path / "adapter_config.json").read_text()
    assert json.loads(text) == {**config, "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"]}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)  # peft's own layout, no trailing newline
    T.sort_target_modules(tmp_path / "missing")  # a full fine-tune has no adapter config: nothing to do


def test_a_task_mixture_validates_its_loss_on_every_row_and_em_f1_on_its_short_answers(tiny: dict) -> None:
    """EM/F1 against the answer mean nothing for a summary or a JSON target: they count in the validation loss only."""
    from datasets import Dataset

    from rag_pipeline.prompt import get_template

    tok = load_generator(str(tiny["llama"]), device="cpu")[1]
    val = Dataset.from_dict({"id": ["a", "b", "c", "d"], "prompt": ["p1", "p2", "p3", "p4"], "completion": ["x [1]", "S [1].", "y [2]", "{}"],
                             "answer": [["x"], ["s"], ["y"], ["z"]], "answerable": [True, True, False, True],
                             "task": ["qa", "summary", "qa", "extract"]})
    ev = T.eval_set(val, tok, "causal", get_template("raft-v1"), T.TrainConfig(dataset="mix", output="o", eval_generate=5))
    assert len(ev.examples) == 4 and ev.answers == [["x"], ["y"]] and ev.answerable == [True, False] and len(ev.texts) == 2
