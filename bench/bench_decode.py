#!/usr/bin/env python3
"""Decoding speed per token and prompt reading, ours against plain transformers and llama.cpp.

In one run, on the packaged SmolLM2-135M-Instruct with the adapter ``ask`` would choose merged
into it (or ``--no-adapter``), and the same prompts (``--prompts`` questions of the dev split, two
passages each, as ``ask`` shows them):

1. ours, ``generate`` (``--draft-tokens 0``): bf16 weights prepacked for oneDNN with sibling
   projections fused (``--kernels fast``, :mod:`rag_pipeline.inference`), decoding with transformers'
   ``generate`` into a preallocated cache (``generator.static_cache``);
2. plain transformers (``--kernels plain``): the same bf16 model as loaded, ``generate`` with its
   default cache;
2b. ours on the decode engine (:class:`rag_pipeline.batching.DecodeEngine`, its own decode step for
   Llama-layout models over a shared cache), one prompt at a time, one token a step (``serve --draft-tokens 0``);
2c. the same engine checking ``--draft-tokens`` tokens guessed by prompt lookup in each step (what
   ``ask``, ``evaluate``, ``calibrate`` and ``serve`` decode greedy answers with by default); then ``--rows`` prompts
   decoding together, without and with the guesses, printed as the time of one step and per answer token;
3. llama.cpp (``llama-cpp-python``, when installed: ``pip install llama-cpp-python``, a source
   build of about 12 minutes on 2 idle cores) on the same adapter exported to an f16 GGUF
   (``rag-pipeline export --format gguf``), given the same token ids, ``--threads`` threads: one token
   at a time (the baseline), and through ``Llama.generate`` with its own prompt lookup
   (``LlamaPromptLookupDecoding``, ``--draft-tokens`` guesses).

Each route reads each prompt (prefill: the time to the first token) and then decodes
``--new-tokens`` tokens greedily with end-of-sequence ruled out, so that every route decodes the
same number of tokens; decode time per token is (whole time - prefill) / (tokens - 1). Figures
are medians over prompts of the fastest of ``--repeats`` runs. The tokens each route decoded are
compared with plain transformers': ours computes the same products bitwise, but its preallocated
cache's masked attention changes the bf16 logits' last bits, and llama.cpp computes in f16, so a
near tie can go the other way; the table gives the first token where a prompt's decode differs.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_decode.py --prompts 8 --new-tokens 48
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_constrained import prompts  # noqa: E402 - the same prompts as the constrained-decoding bench


def torch_route(model, ids: list[int], n: int, eos: int, static: bool) -> tuple[float, float, list[int]]:
    """(prefill s, whole s, tokens) of one prompt: greedy, ``n`` tokens, EOS ruled out (any model with transformers'
    ``generate``: ``scripts/decode_openvino.py`` times OpenVINO's with it, in a venv without this project's packages)."""
    import torch

    x = torch.tensor([ids])

    def run(steps: int) -> list[int]:
        kw = {}
        if static:
            from rag_pipeline import generator

            kw = {generator.cache_name(): generator.static_cache(model, len(ids) + steps)}
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, pad_token_id=eos, eos_token_id=eos, **kw)
        return out[0, len(ids):].tolist()

    with torch.inference_mode():
        t0 = time.perf_counter()
        run(1)
        t1 = time.perf_counter()
        tokens = run(n)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, tokens


def llama_route(llm, ids: list[int], n: int, eos: int) -> tuple[float, float, list[int]]:
    """The same on llama.cpp: the prompt's ids evaluated, then one token at a time, the argmax with EOS ruled out."""
    import numpy as np

    def logits() -> np.ndarray:
        row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        row[eos] = -np.inf
        return row

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    first = int(logits().argmax())
    t1 = time.perf_counter()
    llm.reset()
    t1b = time.perf_counter()
    llm.eval(ids)
    tokens = [int(logits().argmax())]
    while len(tokens) < n:
        llm.eval([tokens[-1]])
        tokens.append(int(logits().argmax()))
    t2 = time.perf_counter()
    assert tokens[0] == first
    return t1 - t0, t2 - t1b, tokens


def llama_lookup_route(llm, ids: list[int], n: int, eos: int) -> tuple[float, float, list[int]]:
    """The same on llama.cpp with its own prompt lookup (``llm`` built with ``LlamaPromptLookupDecoding``):
    ``Llama.generate`` greedy (top-k 1, temperature 0), EOS ruled out by a logits processor."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    def no_eos(_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[eos] = -np.inf
        return scores

    def run(steps: int) -> list[int]:
        llm.reset()  # no prefix of an earlier prompt reused
        out: list[int] = []
        for token in llm.generate(ids, top_k=1, temp=0.0, logits_processor=LogitsProcessorList([no_eos])):
            out.append(int(token))
            if len(out) == steps:
                break
        return out

    t0 = time.perf_counter()
    first = run(1)
    t1 = time.perf_counter()
    tokens = run(n)
    t2 = time.perf_counter()
    assert tokens[0] == first[0]
    return t1 - t0, t2 - t1, tokens


def products_alone(model, repeats: int = 30) -> float:
    """Seconds a token spends in the prepared model's matrix products alone: each packed product of one decoding step
    (the layers' fused q/k/v, o, fused gate/up and down, then the head), in order, on a random bf16 row."""
    import torch

    from rag_pipeline import inference

    products = []
    for module in model.modules():  # module order is forward order for these decoders
        fn = getattr(module, "fn", None)
        if isinstance(fn, inference.PackedLinear):
            products.append(fn)
        elif isinstance(fn, functools.partial) and isinstance(fn.func.__self__, inference.FusedProjections) and fn.args == (0,):
            products.append(fn.func.__self__.product)  # a fused group, once: at its first part
    rows = {p.in_features: torch.randn(1, p.in_features, dtype=torch.bfloat16) for p in products}
    with torch.inference_mode():
        for p in products:
            p(rows[p.in_features])
        t = time.perf_counter()
        for _ in range(repeats):
            for p in products:
                p(rows[p.in_features])
    return (time.perf_counter() - t) / repeats


def engine_route(model, ids: list[int], n: int, eos: int, draft: int = 0) -> tuple[float, float, list[int]]:
    """(prefill s, whole s, tokens) of one prompt decoded alone on a :class:`DecodeEngine` (in this thread), with
    ``draft`` tokens guessed by prompt lookup and checked in each step."""
    steps, tokens = engine_rows(model, [ids], n, eos, draft)
    return steps[0], steps[0] + sum(steps[1:]), tokens[0]


def engine_rows(model, cases: list[list[int]], n: int, eos: int, draft: int = 0) -> tuple[list[float], list[list[int]]]:
    """Prompts joining one :class:`DecodeEngine` together: ([time to read them all, then each step's], tokens per prompt)."""
    from concurrent.futures import Future

    import torch

    from rag_pipeline import batching, generator

    engine = batching.DecodeEngine(model, max_rows=len(cases), draft_tokens=draft)
    futures = [Future() for _ in cases]
    with torch.no_grad():
        t0 = time.perf_counter()
        for ids, f in zip(cases, futures):
            engine._join(generator.RowSpec(ids, n, eos, bad=[[eos]]), f)
        times = [time.perf_counter() - t0]
        while engine._rows:
            t0 = time.perf_counter()
            engine._step()
            times.append(time.perf_counter() - t0)
    return times, [f.result().tokens for f in futures]


def best(route, repeats: int) -> tuple[float, float, list[int]]:
    """The fastest of ``repeats`` runs by whole time, with its own prefill and tokens."""
    return min((route() for _ in range(repeats)), key=lambda r: r[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: torch's thread count)")
    ap.add_argument("--no-adapter", action="store_true")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when llama-cpp-python is installed")
    ap.add_argument("--rows", type=int, default=4, help="prompts decoding together on the continuous-batching engine")
    ap.add_argument("--draft-tokens", type=int, default=4, help="tokens guessed by prompt lookup and checked in each step (ask's --draft-tokens)")
    args = ap.parse_args()

    import torch

    from rag_pipeline import generator, inference
    from rag_pipeline.model_paths import REFERENCE_ADAPTER, SMOLLM2_ID
    from rag_pipeline.prompt import get_template, model_text_fn, render_user

    adapter = None if args.no_adapter or not Path(REFERENCE_ADAPTER).is_dir() else REFERENCE_ADAPTER
    plain, tok, kind = generator.load_generator(SMOLLM2_ID, adapter, device="cpu", dtype="bfloat16", merge=True)
    ours = copy.deepcopy(plain)
    said = inference.prepare(ours)
    template = get_template("raft-v1")
    to_text = model_text_fn(tok, template)
    cases = [generator.encode_prompt(tok, kind, to_text(render_user(template, q, [{"title": "", "text": p} for p in ps])))
             for q, ps in prompts(args.prompts)]
    eos, n = tok.eos_token_id, args.new_tokens
    threads = args.threads or torch.get_num_threads()

    routes = {"ours, generate (--draft-tokens 0)": lambda ids: torch_route(ours, ids, n, eos, static=True),
              "ours, engine, one token a step (serve --draft-tokens 0)": lambda ids: engine_route(ours, ids, n, eos),
              f"ours, engine with prompt lookup (--draft-tokens {args.draft_tokens}: the default)":
                  lambda ids: engine_route(ours, ids, n, eos, args.draft_tokens),
              "plain": lambda ids: torch_route(plain, ids, n, eos, static=False)}
    gguf_dir = None  # the export's temporary folder, kept while llama.cpp reads it
    if not args.no_llama_cpp:
        try:
            from llama_cpp import Llama
        except ImportError:
            print("# llama-cpp-python is not installed: no llama.cpp row (pip install llama-cpp-python)", file=sys.stderr)
        else:
            from rag_pipeline.export import ExportConfig
            from rag_pipeline.export import run as export

            gguf_dir = tempfile.TemporaryDirectory(prefix="bench-decode-")
            if adapter is None:
                print("# llama.cpp needs an adapter to export: no llama.cpp row", file=sys.stderr)
            else:
                export(ExportConfig(adapter=adapter, output=str(Path(gguf_dir.name) / "gguf"), format="gguf", gguf_type="f16"))
                gguf = next((Path(gguf_dir.name) / "gguf").glob("*.gguf"))
                llm = Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
                routes["llama.cpp"] = lambda ids: llama_route(llm, ids, n, eos)
                from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

                # logits_all: llama-cpp-python 0.3.36 keeps logits rows for n_batch tokens only without it, too few past 512
                lookup = Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False,
                               logits_all=True, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=args.draft_tokens))
                routes[f"llama.cpp with its prompt lookup ({args.draft_tokens} guesses)"] = lambda ids: llama_lookup_route(lookup, ids, n, eos)

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"adapter {adapter or 'none'}, {len(cases)} prompts of {min(map(len, cases))}-{max(map(len, cases))} tokens, "
          f"{n} tokens each; ours: {said or 'nothing to prepare'}")
    for route in routes.values():  # first calls set up kernels and caches: not timed
        route(cases[0])
    results: dict[str, list[tuple[float, float, list[int]]]] = {name: [] for name in routes}
    for ids in cases:
        for name, route in routes.items():  # routes alternate per prompt, so a busy moment hits all of them
            results[name].append(best(lambda: route(ids), args.repeats))
    ref_tokens = [r[2] for r in results["plain"]]
    llama_decode = statistics.median((w - p) / (n - 1) for p, w, _ in results["llama.cpp"]) if "llama.cpp" in results else None
    print("| route | prefill ms (median) | decode ms/token (median) | vs llama.cpp | prompts decoded as plain transformers (first other token) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        prefill = statistics.median(p for p, _, _ in rows)
        decode = statistics.median((w - p) / (n - 1) for p, w, _ in rows)
        firsts = [next(i for i, (a, b) in enumerate(zip(r[2] + [-1], t + [-2])) if a != b) for r, t in zip(rows, ref_tokens) if r[2] != t]
        ratio = f"{decode / llama_decode:.2f}x" if llama_decode else "-"
        where = f" (token {', '.join(str(i + 1) for i in firsts)})" if firsts else ""
        print(f"| {name} | {1000 * prefill:.0f} | {1000 * decode:.1f} | {ratio} | {len(rows) - len(firsts)} of {len(rows)}{where} |")
    rows = min(args.rows, len(cases))
    for draft in (0, args.draft_tokens):
        timed = min((engine_rows(ours, cases[:rows], n, eos, draft) for _ in range(args.repeats)), key=lambda r: sum(r[0]))
        whole = sum(timed[0][1:])  # every row decodes n tokens: n - 1 after the prompt reads' first
        per = whole / (rows * (n - 1))
        print(f"\nthe engine, {rows} prompts decoding together, --draft-tokens {draft}: {len(timed[0]) - 1} steps, "
              f"{1000 * whole / (len(timed[0]) - 1):.1f} ms a step, {1000 * per:.1f} ms per answer token"
              + (f" ({per / llama_decode:.2f}x llama.cpp's one stream)" if llama_decode else ""))
    floor = products_alone(ours)
    print(f"\nours, the matrix products alone (prepacked and fused, one token's, in order): {1000 * floor:.1f} ms a token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
