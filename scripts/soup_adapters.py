#!/usr/bin/env python3
"""Two LoRA adapters of one base as one: their weight updates mixed, exactly, as a LoRA of the two ranks summed.

``w * delta_1 + (1 - w) * delta_2`` where ``delta_i = s * B_i A_i`` (``s = lora_alpha / r``, the same for both; the
ranks may differ, so a soup can be mixed again with a third adapter) is itself a LoRA update of rank ``r_1 + r_2``:
``A = [A_1; A_2]`` stacked, ``B = [w B_1, (1 - w) B_2]`` side by side, ``lora_alpha`` scaled with the rank so that
``s`` stays. Averaging the A and B matrices of two adapters would not give
this (their products mix). The output takes the first adapter's other files (template, tokenizer, metadata); its
calibration is dropped (calibrate it again). A weight-space mix of two fine-tunes of one starting point (a "model
soup") often keeps much of each one's strengths.

``--rank R`` stores the soup at rank R instead: each module's update replaced by its best rank-R approximation (SVD),
with the share of the updates' squared norm that keeps printed.

Usage::

    .venv/bin/python scripts/soup_adapters.py adapters/smollm2-disfl-qa runs/adapter-mix-520 --weight 0.5 --output runs/adapter-soup
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from rag_pipeline.adapter_meta import read_adapter_meta, write_adapter_meta  # noqa: E402
from rag_pipeline.atomic import atomic_dir, check_separate  # noqa: E402
from rag_pipeline.errors import ConfigError  # noqa: E402
from rag_pipeline.train import ARTIFACT  # noqa: E402 - what a soup may replace: an adapter we wrote


def truncate(weights: dict, rank: int) -> tuple[dict, float]:
    """Each module's update ``B A`` as the closest update of rank ``rank`` (its top singular directions: B' = U S^1/2,
    A' = S^1/2 V^T), and the share of the updates' squared Frobenius norm kept (1.0: exact)."""
    import torch

    out, kept, total = {}, 0.0, 0.0
    for name_a in [n for n in weights if ".lora_A." in n]:
        name_b = name_a.replace(".lora_A.", ".lora_B.")
        delta = weights[name_b].double() @ weights[name_a].double()
        u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
        if rank > len(sv):
            sys.exit(f"error: --rank {rank} is above the smallest dimension of {name_a} ({len(sv)}): pass a rank of at most {len(sv)}")
        root = sv[:rank].sqrt()
        out[name_b] = (u[:, :rank] * root).to(weights[name_b].dtype).contiguous()
        out[name_a] = (root[:, None] * vh[:rank]).to(weights[name_a].dtype).contiguous()
        kept, total = kept + float((sv[:rank] ** 2).sum()), total + float((sv ** 2).sum())
    return out, kept / total if total else 1.0


def soup(first: Path, second: Path, weight: float, out: Path, rank: int | None = None) -> float:
    """Write the soup to ``out``; ``rank``: truncated to that rank (:func:`truncate`). Returns the share of the
    updates' squared norm kept (1.0 without ``rank``)."""
    import torch
    from safetensors.torch import load_file, save_file

    check_separate([first, second], out)
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (first, second)]
    same = ("use_rslora", "use_dora", "base_model_name_or_path")
    differ = [k for k in same if configs[0].get(k) != configs[1].get(k)]
    scale = [c["lora_alpha"] / c["r"] for c in configs]
    differ += ["lora_alpha / r"] * (scale[0] != scale[1]) + ["target_modules"] * (set(configs[0]["target_modules"]) != set(configs[1]["target_modules"]))
    if differ:
        sys.exit(f"error: {first} and {second} differ in {differ}: a soup needs adapters of one base, scale (lora_alpha / r) "
                 "and target modules")
    if configs[0].get("use_dora") or configs[0].get("use_rslora"):
        sys.exit("error: DoRA and rsLoRA adapters are not mixed by this script (their scale is not lora_alpha / r)")
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (first, second))
    if a.keys() != b.keys():
        sys.exit(f"error: {first} and {second} hold different tensors")
    mixed = {}
    for name, t in a.items():
        if ".lora_A." in name:
            mixed[name] = torch.cat([t, b[name]], 0).contiguous()
        elif ".lora_B." in name:
            mixed[name] = torch.cat([weight * t, (1 - weight) * b[name]], 1).contiguous()
        else:
            sys.exit(f"error: {name} is neither a LoRA A nor B matrix: only plain LoRA adapters are mixed")
    r, kept = configs[0]["r"] + configs[1]["r"], 1.0
    if rank is not None and rank < r:
        mixed, kept = truncate(mixed, rank)
        r = rank
    with atomic_dir(out, ARTIFACT) as tmp:
        for f in first.iterdir():
            if f.is_file() and f.name not in ("adapter_model.safetensors", "adapter_config.json", "loss_curve.png"):
                shutil.copy2(f, tmp / f.name)
        alpha = scale[0] * r
        config = {**configs[0], "r": r, "lora_alpha": int(alpha) if alpha == int(alpha) else alpha}
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        save_file(mixed, str(tmp / "adapter_model.safetensors"))
        meta = read_adapter_meta(tmp)
        made = {"first": str(first), "second": str(second), "weight": weight, "rank": r}  # what the card says it is
        write_adapter_meta(tmp, dataclasses.replace(meta, abstention=None, metrics=None, evals=None, extra={**meta.extra, "soup": made}))
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--weight", type=float, default=0.5, help="the first adapter's share of the update, in [0, 1]")
    ap.add_argument("--output", required=True)
    ap.add_argument("--rank", type=int, default=None,
                    help="store the soup at this rank (each module's best approximation by SVD) instead of the two ranks summed")
    args = ap.parse_args()
    if not 0 <= args.weight <= 1:
        sys.exit(f"error: --weight is {args.weight}: use a share in [0, 1]")
    if args.rank is not None and args.rank < 1:
        sys.exit(f"error: --rank is {args.rank}: use a rank of 1 or more")
    try:
        kept = soup(Path(args.first), Path(args.second), args.weight, Path(args.output), args.rank)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    stored = json.loads((Path(args.output) / "adapter_config.json").read_text())["r"]
    print(f"{args.output}: {args.weight} x {args.first} + {1 - args.weight:g} x {args.second}, rank {stored}"
          + (" (exact)" if kept == 1.0 else f" ({kept:.2%} of the updates' squared norm kept)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
