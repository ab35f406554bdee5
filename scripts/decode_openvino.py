#!/usr/bin/env python3
"""Decoding speed of the LoRA-merged SmolLM2-135M-Instruct on OpenVINO (optimum-intel), as ``bench/bench_decode.py`` measures.

Each prompt (the same ``--prompts`` prompts and token ids as ``bench/bench_decode.py``) is read (prefill: the time
to the first token) and then decoded greedily for ``--new-tokens`` tokens with end-of-sequence ruled out; decode time
per token is (whole time - prefill) / (tokens - 1); figures are medians over prompts of the fastest of ``--repeats``
runs. The tokens are compared with plain transformers' (the bf16 model ``bench_decode.py``'s "plain" row decodes,
and the same in float32), and the script checks whether optimum-intel's ``generate`` takes a transformers
``LogitsProcessor`` and returns scores and logits.

Two steps, two environments (OpenVINO's optimum-intel 2.2.0 needs transformers 5.5, the project uses 5.25):

1. with the project's venv, from the repository root: the merged float32 model and tokenizer saved to ``--work``
   (``merged/``), and the prompts' ids, EOS and plain transformers' tokens to ``prompts.json``::

       HF_HUB_OFFLINE=1 .venv/bin/python scripts/decode_openvino.py --prepare

2. in a separate venv with OpenVINO (torch pinned first, so that the CPU build stays; an unpinned torch pulls CUDA)::

       /root/.pyenv/versions/3.11.7/bin/python -m venv /tmp/ov/venv
       /tmp/ov/venv/bin/pip install torch==2.13.0
       echo torch==2.13.0 > /tmp/ov/constraints.txt
       /tmp/ov/venv/bin/pip install "optimum-intel[openvino]==2.2.0" -c /tmp/ov/constraints.txt
       /tmp/ov/venv/bin/pip uninstall -y torchvision  # PyPI's 0.28.0 is a CUDA build: its ops fail to load on CPU torch,
                                                      # which breaks transformers' AutoProcessor import (optimum-intel's LLMs don't use it)
       HF_HUB_OFFLINE=1 /tmp/ov/venv/bin/python scripts/decode_openvino.py

   which exports ``merged/`` to OpenVINO IR (``ir/``, stateful key/value cache, optimum-intel's default) and times it
   at OpenVINO's default inference precision and at ``INFERENCE_PRECISION_HINT=f32``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_decode import torch_route  # noqa: E402 - bench_decode's timed greedy decode (imports only the standard library at load)


def prepare(work: Path, n_prompts: int, n: int) -> None:
    """Project venv: the merged model saved in float32, the prompts' ids and plain transformers' tokens (bf16 and f32)."""
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)  # the reference adapter's path is relative to the checkout
    from bench_constrained import prompts

    from rag_pipeline import generator
    from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
    from rag_pipeline.prompt import get_template, model_text_fn, render_user

    if (work / "merged").exists() and not (work / "prompts.json").is_file():
        raise SystemExit(f"{work / 'merged'} exists but was not written by this script (no {work / 'prompts.json'}): pass another --work")
    adapter = REFERENCE_ADAPTER if Path(REFERENCE_ADAPTER).is_dir() else None
    model, tok, kind = generator.load_generator(SMOLLM2_ID, adapter, device="cpu", dtype="float32", merge=True)
    model.save_pretrained(work / "merged")
    tok.save_pretrained(work / "merged")
    template = get_template("raft-v1")
    to_text = model_text_fn(tok, template)
    cases = [generator.encode_prompt(tok, kind, to_text(render_user(template, q, [{"title": "", "text": p} for p in ps])))
             for q, ps in prompts(n_prompts)]
    eos = tok.eos_token_id
    plain = {"float32": [torch_route(model, ids, n, eos, static=False)[2] for ids in cases]}
    bf16, _, _ = generator.load_generator(SMOLLM2_ID, adapter, device="cpu", dtype="bfloat16", merge=True)
    plain["bfloat16"] = [torch_route(bf16, ids, n, eos, static=False)[2] for ids in cases]
    (work / "prompts.json").write_text(json.dumps({"adapter": adapter, "eos": eos, "new_tokens": n, "prompts": cases, "plain": plain}))
    print(f"saved {work / 'merged'} and {work / 'prompts.json'}: {len(cases)} prompts, adapter {adapter}")


def first_other(a: list[int], b: list[int]) -> int | None:
    """1-based index of the first token where two decodes differ, None when identical."""
    return None if a == b else next(i + 1 for i, (x, y) in enumerate(zip(a + [-1], b + [-2], strict=False)) if x != y)


def processors_check(model: Any, ids: list[int], eos: int, banned: int) -> str:
    """Whether ``generate`` applies a transformers LogitsProcessor (bans ``banned``) and returns scores and raw logits."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Ban(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores[:, banned] = -float("inf")
            return scores

    x = torch.tensor([ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=eos,
                         eos_token_id=eos, logits_processor=LogitsProcessorList([Ban()]), output_scores=True, output_logits=True,
                         return_dict_in_generate=True)
    new = out.sequences[0, len(ids):].tolist()
    scores, logits = out.scores, out.logits
    full = model(input_ids=x, attention_mask=torch.ones_like(x)).logits  # one forward over the prompt: logits per position?
    return (f"banned token {banned} (plain's first) applied: {banned not in new} (tokens {new}); scores: {len(scores or [])} x "
            f"{tuple(scores[0].shape) if scores else None}, banned score {float(scores[0][0, banned]) if scores else None}; "
            f"logits: {len(logits or [])} x {tuple(logits[0].shape) if logits else None}; forward over the {len(ids)}-token prompt "
            f"gives logits of shape {tuple(full.shape)}")


def measure(work: Path, repeats: int, threads: int) -> None:
    """OpenVINO venv: export, then time each precision and compare tokens with plain transformers'."""
    import openvino as ov
    import torch
    import transformers
    from optimum.intel import OVModelForCausalLM

    data = json.loads((work / "prompts.json").read_text())
    cases, eos, n, plain = data["prompts"], data["eos"], data["new_tokens"], data["plain"]
    ir = work / "ir"
    if not (ir / "openvino_model.xml").is_file():
        t = time.perf_counter()
        OVModelForCausalLM.from_pretrained(str(work / "merged"), export=True, compile=False).save_pretrained(ir)
        print(f"# exported {work / 'merged'} to {ir} in {time.perf_counter() - t:.0f} s")
    weights = sorted({op.get_output_element_type(0).get_type_name() for op in ov.Core().read_model(ir / "openvino_model.xml").get_ops()
                      if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 2})  # the matrices' element types
    torch.set_num_threads(threads)
    print(f"# {ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}, openvino {ov.__version__}, optimum-intel {version('optimum-intel')}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}; {threads} threads; IR weights {', '.join(weights)}; "
          f"adapter {data['adapter']}, {len(cases)} prompts of {min(map(len, cases))}-{max(map(len, cases))} tokens, {n} tokens each")
    print("| OpenVINO route | prefill ms (median) | decode ms/token (median) | as plain bf16 (first other token) "
          "| as plain f32 (first other token) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    check = ""
    for hint in (None, "f32"):
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""}
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        model = OVModelForCausalLM.from_pretrained(str(ir), ov_config=config)
        precision = model.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()
        torch_route(model, cases[0], n, eos, static=False)  # first call: not timed
        rows = [min((torch_route(model, ids, n, eos, static=False) for _ in range(repeats)), key=lambda r: r[1]) for ids in cases]
        prefill = statistics.median(p for p, _, _ in rows)
        decode = statistics.median((w - p) / (n - 1) for p, w, _ in rows)
        same = []
        for ref in (plain["bfloat16"], plain["float32"]):
            firsts = [f for f in (first_other(r[2], t) for r, t in zip(rows, ref, strict=True)) if f is not None]
            same.append(f"{len(rows) - len(firsts)} of {len(rows)}" + (f" (token {', '.join(map(str, firsts))})" if firsts else ""))
        print(f"| stateful IR, {'default' if hint is None else 'hint ' + hint} (inference precision {precision}) | {1000 * prefill:.0f} | "
              f"{1000 * decode:.1f} | {same[0]} | {same[1]} |")
        if not check:
            check = processors_check(model, cases[0], eos, plain["bfloat16"][0][0])
    print(f"\n# logits processors and scores: {check}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", action="store_true", help="with the project's venv: save the merged model and the prompts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ov"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.work, args.prompts, args.new_tokens)
    else:
        measure(args.work, args.repeats, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
