"""How well can the bundled models tell answerable from unanswerable questions? (evaluate's abstention goal)

The abstention goal (>= 80% abstain on unanswerable test questions with <= 10% false
abstentions) needs a score that ranks unanswerable questions above answerable ones with
AUC ~0.9 or more. This measures, on the RAFT dataset's validation split (gold passage shown),
the best such score each bundled model offers:

1. the tuned generator (``--adapter``), on a balanced seeded sample of ``--n`` questions:
   log P(abstain sentence | prompt) (teacher-forced), the log-probability of its best
   non-abstaining answer (greedy, "The documents ..." banned), and their difference (SQuAD 2.0's
   null-score difference); plus the greedy answer's own abstain rates;
2. a cross-encoder: all-MiniLM-L6-v2 fine-tuned (seeded, full fine-tune, BCE) on the training
   split's (question, gold passage) -> answerable pairs, scored on the whole validation split.

For each score: ROC AUC (unanswerable vs answerable) and the abstain rate on unanswerable
questions at the threshold that abstains on 10% of answerable ones. Prints a JSON summary and
writes it to ``--output``.

    .venv/bin/python scripts/answerability_probe.py --dataset runs/raft --adapter adapters/smollm2-disfl-qa
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def abstain_at(pos: list[float], neg: list[float], false_abstain: float = 0.10) -> float:
    """Share of positives (unanswerable) above the lowest threshold that flags at most ``false_abstain`` of negatives."""
    th = sorted(neg)[int((1 - false_abstain) * len(neg))]
    return sum(p > th for p in pos) / len(pos)


def summary(scores: list[float], unanswerable: list[bool]) -> dict:
    """ROC AUC of ``scores`` for flagging unanswerable questions, and :func:`abstain_at` 10%."""
    from sklearn.metrics import roc_auc_score

    pos = [s for s, u in zip(scores, unanswerable) if u]
    neg = [s for s, u in zip(scores, unanswerable) if not u]
    return {"auc": round(float(roc_auc_score(unanswerable, scores)), 4), "abstain_at_10pct_false_abstain": round(abstain_at(pos, neg), 4)}


def read_split(dataset: Path, split: str) -> list[dict]:
    path = dataset / "jsonl" / f"{split}.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} is missing: build it with rag-pipeline build-raft-dataset --config configs/raft.yaml --format eval")
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def gold_pairs(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(question, gold passage, answerable) for rows that show the gold passage: ``oracle_position``
    is 0-based, and -1 (build-raft-dataset's "no oracle") or a missing one is left out."""
    return [(r["question"], r["documents"][r["oracle_position"]]["text"], bool(r["answerable"]))
            for r in rows if isinstance(r.get("oracle_position"), int) and r["oracle_position"] >= 0]


def probe_generator(adapter: str, rows: list[dict], n: int, seed: int) -> dict:
    import torch

    from rag_pipeline.adapter_meta import read_adapter_meta
    from rag_pipeline.answer.ask import is_abstention
    from rag_pipeline.generator import collate, encode_example, encode_prompt, load_generator, pad
    from rag_pipeline.prompt import ABSTAIN, DEFAULT_TEMPLATE, get_template, to_model_text

    rng = random.Random(seed)
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    rng.shuffle(ans)
    rng.shuffle(una)
    rows = ans[: n // 2] + una[: n // 2]
    model, tok, kind = load_generator(None, adapter, device="cpu", dtype="bfloat16", merge=True)
    template = get_template(read_adapter_meta(adapter).template or DEFAULT_TEMPLATE)
    texts = [to_model_text(tok, template, r["prompt"]) for r in rows]
    ban = [tok(p, add_special_tokens=False)["input_ids"] for p in ("The documents", "The document")]

    def generate(batch: list[str], banned: bool) -> list[tuple[str, float]]:
        enc = [encode_prompt(tok, kind, t) for t in batch]
        ids, mask = pad(enc, tok.pad_token_id, "left")
        width = ids.size(1)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=32, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, output_logits=True,
                                 return_dict_in_generate=True, bad_words_ids=ban if banned else None)
        new = out.sequences[:, width:]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        res = []
        for i in range(len(enc)):
            toks = new[i].tolist()
            end = toks.index(tok.eos_token_id) + 1 if tok.eos_token_id in toks else len(toks)
            res.append((tok.decode(new[i], skip_special_tokens=True).strip(), float(logp[i, :end].sum())))
        return res

    def abstain_logp(batch: list[str]) -> list[float]:
        b = collate([encode_example(tok, kind, t, ABSTAIN, 4096) for t in batch], tok.pad_token_id, kind)
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
        y = b["labels"][:, 1:]
        lp = logits[:, :-1].float().log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * (y != -100)).sum(1).tolist()

    recs = []
    t0 = time.perf_counter()
    for s in range(0, len(rows), 8):
        batch = texts[s:s + 8]
        greedy, lp_abs = generate(batch, False), abstain_logp(batch)
        # The best non-abstaining answer is the greedy one unless that abstained: re-decode only those.
        redo = [j for j, (text, _) in enumerate(greedy) if is_abstention(text) or "The document" in text]
        best = dict(zip(redo, generate([batch[j] for j in redo], True))) if redo else {}
        for j, r in enumerate(rows[s:s + 8]):
            recs.append({"unanswerable": not r["answerable"], "greedy_abstains": is_abstention(greedy[j][0]),
                         "lp_abstain": lp_abs[j], "lp_best_answer": best.get(j, greedy[j])[1]})
        print(f"generator: {len(recs)}/{len(rows)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    una_flags = [r["unanswerable"] for r in recs]
    return {
        "questions": len(recs), "unanswerable": sum(una_flags),
        "greedy_abstain_rate_unanswerable": round(sum(r["greedy_abstains"] for r in recs if r["unanswerable"]) / max(1, sum(una_flags)), 4),
        "greedy_false_abstain_rate": round(sum(r["greedy_abstains"] for r in recs if not r["unanswerable"]) / max(1, len(recs) - sum(una_flags)), 4),
        "log_p_abstain": summary([r["lp_abstain"] for r in recs], una_flags),
        "null_score_difference": summary([r["lp_abstain"] - r["lp_best_answer"] for r in recs], una_flags),
        "minus_log_p_best_answer": summary([-r["lp_best_answer"] for r in recs], una_flags),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def probe_cross_encoder(train: list[tuple[str, str, bool]], val: list[tuple[str, str, bool]], epochs: float,
                        max_length: int, lr: float, batch_size: int, seed: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rag_pipeline.model_paths import MINILM_ID, resolve_model

    torch.manual_seed(seed)
    path = str(resolve_model(MINILM_ID))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)  # the head starts random
    steps = int(len(train) * epochs / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / steps))
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        idx = list(range(len(train)))
        rng.shuffle(idx)
        order += idx

    def encode(batch: list[tuple[str, str, bool]]) -> dict:
        return tok([q for q, _, _ in batch], [p for _, p, _ in batch], truncation="only_second", max_length=max_length,
                   padding=True, return_tensors="pt")

    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = [train[i] for i in order[step * batch_size:(step + 1) * batch_size]]
        y = torch.tensor([float(a) for _, _, a in batch])
        loss = loss_fn(model(**encode(batch)).logits.squeeze(-1), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"cross-encoder: step {step}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    logits: list[float] = []
    with torch.no_grad():
        for s in range(0, len(val), 64):
            logits += model(**encode(val[s:s + 64])).logits.squeeze(-1).tolist()
    # the logit says "answerable": an unanswerable question should score low
    return {"train_pairs": len(train), "val_pairs": len(val), "epochs": epochs, "steps": steps, "max_length": max_length,
            "learning_rate": lr, "batch_size": batch_size, **summary([-x for x in logits], [not a for _, _, a in val]),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="runs/raft", help="build-raft-dataset output (with --format eval: jsonl/)")
    p.add_argument("--adapter", default="adapters/smollm2-disfl-qa", help="tuned generator; '' skips the generator probe")
    p.add_argument("--n", type=int, default=160, help="validation questions for the generator probe (half unanswerable)")
    p.add_argument("--ce-epochs", type=float, default=1.0, help="cross-encoder epochs over the training split; 0 skips it")
    p.add_argument("--ce-max-length", type=int, default=320)
    p.add_argument("--ce-lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/answerability-probe.json")
    a = p.parse_args()
    dataset = Path(a.dataset)
    val_rows = read_split(dataset, "validation")
    result: dict = {"dataset": str(dataset), "seed": a.seed}
    if a.adapter:
        result["generator"] = {"adapter": a.adapter, **probe_generator(a.adapter, val_rows, a.n, a.seed)}
    if a.ce_epochs > 0:
        result["cross_encoder"] = probe_cross_encoder(gold_pairs(read_split(dataset, "train")), gold_pairs(val_rows),
                                                      a.ce_epochs, a.ce_max_length, a.ce_lr, 16, a.seed)
    from rag_pipeline.atomic import write_json

    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(a.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
