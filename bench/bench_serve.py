#!/usr/bin/env python3
"""``serve`` under load: throughput, latency percentiles, errors and memory, beside ``ask --questions``.

In one run, on the real packaged models (MiniLM index, SmolLM2-135M-Instruct + the adapter) and
the first ``--questions`` questions of the bundled test split:

1. ``rag-pipeline serve`` in a subprocess on a loopback port, once per ``--batching`` mode
   (continuous: answers join and leave the running decode batch between steps; arrival: requests
   that arrive together are one batch); for each ``--concurrency`` level C,
   C client threads each send ``--requests-per-level`` / C chat completions (at least one) one
   after another (questions round robin, greedy, the server's default max_tokens): requests/s,
   p50/p95/p99 latency, errors, and the server's peak RSS; then short answers beside a long one:
   a long answer is asked (a JSON list of 64 strings, which runs to ``--long-tokens``), and once it
   streams, ``--mixed`` short questions are asked by as many clients: their latency, against a
   short answer's alone;
2. the queue bound: ``--overflow`` requests at once against ``--max-queue`` (with max_tokens 1,
   to keep the answered ones cheap); those beyond the bound must get 503 with Retry-After, fast
   (their latency is reported);
3. baseline: the same questions through ``rag-pipeline ask --questions`` (batched, in process,
   no HTTP) in a subprocess: its own questions/s line, and wall time with loading;
4. optional second baseline (``--llama-cpp``, needs ``pip install 'llama-cpp-python[server]'``):
   the adapter exported as GGUF (``rag-pipeline export --format gguf``) served by llama.cpp's
   server (``python -m llama_cpp.server``), sent the same prompts: passages retrieved as ``serve``
   retrieves them (hybrid, top ``-k``), rendered with the adapter's prompt template.

Usage (small counts; the machine shared with other jobs depresses every figure)::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve.py --questions 8 --requests-per-level 8 --llama-cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRSS:
    """Samples a process's RSS (children included) every 0.1 s; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self._stop = psutil.Process(pid), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs) / 2**20)
            except psutil.Error:
                return
            time.sleep(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(url)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))] if xs else float("nan")


def load_level(url: str, payloads: list[dict], clients: int, per_client: int, headers: dict | None = None) -> dict:
    """``clients`` threads, each sending ``per_client`` requests in turn; latency and throughput."""
    lat: list[float] = []
    errors: list[str] = []
    answers: dict[int, str] = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        with httpx.Client(timeout=600, headers=headers) as http:
            start.wait()
            for r in range(per_client):
                i = (c * per_client + r) % len(payloads)
                t0 = time.perf_counter()
                try:
                    resp = http.post(url, json=payloads[i])
                    ok = resp.status_code == 200
                except httpx.HTTPError as e:
                    ok, resp = False, e
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat.append(dt)
                        answers[i] = resp.json()["choices"][0]["message"]["content"]
                    else:
                        errors.append(str(getattr(resp, "status_code", resp)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = clients * per_client
    return {"clients": clients, "requests": n, "wall_s": wall, "rps": len(lat) / wall, "p50": percentile(lat, 50),
            "p95": percentile(lat, 95), "p99": percentile(lat, 99), "errors": len(errors), "answers": answers}


def overflow(url: str, payload: dict, n: int) -> dict:
    """``n`` requests at once: how many got 503 (with Retry-After), and how fast."""
    out: list[tuple[int, float, bool]] = []
    lock, start = threading.Lock(), threading.Barrier(n)

    def one() -> None:
        with httpx.Client(timeout=600) as http:
            start.wait()
            t0 = time.perf_counter()
            r = http.post(url, json=payload)
            with lock:
                out.append((r.status_code, time.perf_counter() - t0, "retry-after" in r.headers))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [x for x in out if x[0] == 503]
    return {"sent": n, "ok": sum(1 for x in out if x[0] == 200), "refused_503": len(refused),
            "refused_with_retry_after": sum(1 for x in refused if x[2]),
            "refused_max_latency_s": max((x[1] for x in refused), default=float("nan")),
            "other": sorted({x[0] for x in out} - {200, 503})}


def ask_baseline(args: argparse.Namespace, qa_file: Path, tmp: Path) -> dict:
    """``rag-pipeline ask --questions`` on the same questions: its own q/s line and the wall time."""
    cmd = [sys.executable, "-m", "rag_pipeline.cli", "ask", "--questions", str(qa_file), "--output", str(tmp / "answers.jsonl"),
           "--index", args.index, "--adapter", args.adapter, "--dtype", args.dtype, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    rss = PeakRSS(proc.pid)
    _, err = proc.communicate()
    peak, wall = rss.stop(), time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ask failed: {err[-2000:]}")
    m = re.search(r"answered (\d+) questions in ([\d.]+) s \(([\d.]+) q/s", err)
    answers = [json.loads(line)["answer"] for line in (tmp / "answers.jsonl").read_text().splitlines()]
    return {"questions": int(m.group(1)), "answer_s": float(m.group(2)), "qps": float(m.group(3)), "wall_s": wall,
            "peak_rss_mib": peak, "answers": answers}


def llama_cpp_baseline(args: argparse.Namespace, questions: list[str], levels: list[int], tmp: Path) -> dict:
    """The adapter exported to GGUF, served by llama.cpp's server, sent the same retrieved prompts."""
    from rag_pipeline.export import ExportConfig
    from rag_pipeline.export import run as export
    from rag_pipeline.prompt import get_template, render_user

    gguf_dir = tmp / "gguf"
    m = export(ExportConfig(adapter=args.adapter, output=str(gguf_dir), format="gguf", gguf_type=args.gguf_type))
    gguf_file = next(gguf_dir.glob("*.gguf"))
    template = get_template(m["template"])
    from rag_pipeline.index.retriever import Retriever

    payloads = []
    hits = Retriever.load(args.index, device="cpu").search_batch(questions, args.k, hybrid=True)  # as serve retrieves
    for q, hs in zip(questions, hits):
        user = render_user(template, q, [{"title": h.chunk.title, "text": h.chunk.text} for h in hs])
        payloads.append({"model": "gguf", "temperature": 0, "max_tokens": args.max_tokens,
                         "messages": [{"role": "system", "content": template.system}, {"role": "user", "content": user}]})
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--model_alias", "gguf", "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 2), "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "llama_cpp.log", "w"), text=True)  # noqa: SIM115
    try:
        url = f"http://127.0.0.1:{port}"
        load_s = wait_healthy(f"{url}/v1/models", proc, 300)
        rss = PeakRSS(proc.pid)
        load_level(f"{url}/v1/chat/completions", payloads[:1], 1, 1)  # warm-up
        results = []
        for c in levels:
            results.append(load_level(f"{url}/v1/chat/completions", payloads, c, max(1, args.requests_per_level // c)))
            progress(f"llama.cpp, {c} client(s): {results[-1]['rps']:.2f} req/s")
        peak = rss.stop()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"gguf": gguf_file.name, "bytes": gguf_file.stat().st_size, "load_s": load_s, "levels": results, "peak_rss_mib": peak}


def serve_mode(args: argparse.Namespace, label: str, questions: list[str], levels: list[int], tmp: Path) -> dict:
    """One server with ``--batching mode`` (``label``: the mode, or ``mode:N`` with ``--draft-tokens N``): the load
    levels, the queue bound, and short answers beside a long one."""
    mode, _, draft = label.partition(":")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rag_pipeline.cli", "serve", "--index", args.index, "--adapter", args.adapter, "--port", str(port),
           "--dtype", args.dtype, "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--batching", mode,
           "--max-queue", str(args.max_queue), "--request-timeout-s", str(args.request_timeout_s), "--max-new-tokens", str(args.max_tokens),
           "--max-tokens-limit", str(max(256, args.long_tokens)), "-k", str(args.k), "-q"] + (["--draft-tokens", draft] if draft else [])
    server_log = open(tmp / f"serve-{label}.log", "w")  # noqa: SIM115 - a pipe nobody reads would fill and block the server
    server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=server_log, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    out: dict = {}
    try:
        out["serve_start_s"] = wait_healthy(f"{url}/health", server)
        progress(f"serve ({mode}) ready in {out['serve_start_s']:.1f} s")
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        payloads = [{"model": model, "messages": [{"role": "user", "content": q}]} for q in questions]
        rss = PeakRSS(server.pid)
        load_level(f"{url}/v1/chat/completions", payloads[:1], 1, 1)  # warm-up
        out["serve"] = []
        for c in levels:
            out["serve"].append(load_level(f"{url}/v1/chat/completions", payloads, c, max(1, args.requests_per_level // c)))
            progress(f"serve ({mode}), {c} client(s): {out['serve'][-1]['rps']:.2f} req/s")
        if args.mixed:
            out["mixed"] = mixed(f"{url}/v1/chat/completions", payloads, args.mixed, args.long_tokens)
            progress(f"serve ({mode}), {args.mixed} short beside a long answer: {out['mixed']}")
        out["serve_peak_rss_mib"] = rss.stop()
        out["batches"] = httpx.get(f"{url}/health").json()["batches"]
        out["overflow"] = overflow(f"{url}/v1/chat/completions", {**payloads[0], "max_tokens": 1}, args.overflow)
        progress(f"queue bound: {out['overflow']}")
    finally:
        server.terminate()
        server.wait(60)
    return out


LONG_SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": 64, "maxItems": 64}},
               "required": ["items"], "additionalProperties": False}  # 64 strings: longer than any max_tokens asked


def mixed(url: str, payloads: list[dict], n: int, long_tokens: int) -> dict:
    """A long answer asked first; once its first tokens have streamed, ``n`` short questions at once: their latencies."""
    long = {**payloads[0], "max_tokens": long_tokens, "stream": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "items", "schema": LONG_SCHEMA}}}
    started, result = threading.Event(), {}

    def long_answer() -> None:
        t0 = time.perf_counter()
        with httpx.Client(timeout=600) as http, http.stream("POST", url, json=long) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    started.set()
            result["long_s"] = time.perf_counter() - t0
        started.set()

    t = threading.Thread(target=long_answer)
    t.start()
    started.wait(600)
    short = load_level(url, payloads[1:] or payloads, n, 1)
    t.join()
    alone = load_level(url, payloads[1:] or payloads, 1, 1)
    return {"short_p50": short["p50"], "short_max": max(short["p99"], short["p50"]), "long_s": result.get("long_s"),
            "short_alone_s": alone["p50"], "errors": short["errors"] + alone["errors"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default="indexes/disfl_qa")
    p.add_argument("--adapter", default="adapters/smollm2-disfl-qa")
    p.add_argument("--qa", default="corpus/disfl_qa/qa/test.jsonl")
    p.add_argument("--questions", type=int, default=16, help="distinct questions (the first of the QA file)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--requests-per-level", type=int, default=8, help="requests per concurrency level, split over its clients")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batching", default="continuous,arrival",
                   help="comma-separated serve --batching modes, each its own server; MODE:N also passes --draft-tokens N")
    p.add_argument("--mixed", type=int, default=4, help="short questions asked while a long answer is written (0: skip)")
    p.add_argument("--long-tokens", type=int, default=200, help="the long answer's max_tokens")
    p.add_argument("--batch-wait-ms", type=float, default=20)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--request-timeout-s", type=float, default=600, help="the server's timeout (long: a busy machine is slow)")
    p.add_argument("--overflow", type=int, default=32, help="simultaneous requests for the queue-bound check")
    p.add_argument("--max-tokens", type=int, default=48, help="the server's default max_tokens (and llama.cpp's)")
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--llama-cpp", action="store_true", help="also llama.cpp's server on the exported GGUF")
    p.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0"])
    p.add_argument("--output", default="", help="JSON file for all figures")
    args = p.parse_args()
    os.chdir(REPO)
    levels = [int(c) for c in args.concurrency.split(",")]
    with open(args.qa, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(args.questions), f)]
    questions = [r["question"] for r in rows]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    qa_file = tmp / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
                            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start", "args": vars(args), "modes": {}}
    for mode in args.batching.split(","):
        out["modes"][mode] = serve_mode(args, mode, questions, levels, tmp)
    if args.llama_cpp:
        out["llama_cpp"] = llama_cpp_baseline(args, questions, levels, tmp)
    out["ask"] = ask_baseline(args, qa_file, tmp)
    out["load_average_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    progress(f"ask --questions: {out['ask']['qps']:.2f} q/s")
    report(out, questions)
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
    return 0


def report(out: dict, questions: list[str]) -> None:
    """Markdown tables ready for the README."""
    ask, modes = out["ask"], out["modes"]
    print(f"\n{out['machine']}, {out['load_average_end']} at the end; "
          + "; ".join(f"{m}: ready in {o['serve_start_s']:.1f} s, batches {o['batches']}" for m, o in modes.items()) + "\n")
    print("| system | clients | requests | req/s | p50 s | p95 s | p99 s | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, o in modes.items():
        for r in o["serve"]:
            print(f"| rag-pipeline serve ({m}) | {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                  f"{r['p99']:.2f} | {r['errors']} |")
    for r in out.get("llama_cpp", {}).get("levels", []):
        print(f"| llama.cpp server ({out['llama_cpp']['gguf']}) | {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | "
              f"{r['p95']:.2f} | {r['p99']:.2f} | {r['errors']} |")
    print(f"| `ask --questions` (batched, no HTTP) | - | {ask['questions']} | {ask['qps']:.2f} | - | - | - | 0 |")
    if any("mixed" in o for o in modes.values()):
        print("\n| serve --batching | short answer alone s | short answers beside a long one: p50 s | slowest s | the long answer s | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for m, o in modes.items():
            x = o.get("mixed")
            if x:
                print(f"| {m} | {x['short_alone_s']:.2f} | {x['short_p50']:.2f} | {x['short_max']:.2f} | {x['long_s']:.2f} | {x['errors']} |")
    print("\npeak RSS: " + "; ".join(f"serve ({m}) {o['serve_peak_rss_mib']:.0f} MiB" for m, o in modes.items())
          + f"; ask {ask['peak_rss_mib']:.0f} MiB" + (f"; llama.cpp {out['llama_cpp']['peak_rss_mib']:.0f} MiB" if "llama_cpp" in out else ""))
    print(f"ask: {ask['wall_s']:.1f} s wall with loading")
    for m, o in modes.items():
        agree = {i: a for r in o["serve"] for i, a in r["answers"].items()}
        print(f"serve ({m}) answers equal to ask's: {sum(1 for i, a in agree.items() if ask['answers'][i] == a)}/{len(agree)}")
        if "llama_cpp" in out:
            lc = {i: a for r in out["llama_cpp"]["levels"] for i, a in r["answers"].items()}
            print(f"llama.cpp answers equal to serve ({m})'s: {sum(1 for i, a in lc.items() if agree.get(i) == a)}/{len(lc)}")
        q = o["overflow"]
        print(f"queue bound ({m}): {q['sent']} at once -> {q['ok']} answered, {q['refused_503']} refused with 503 "
              f"({q['refused_with_retry_after']} with Retry-After), slowest refusal {q['refused_max_latency_s'] * 1000:.0f} ms, other {q['other']}")

if __name__ == "__main__":
    sys.exit(main())
