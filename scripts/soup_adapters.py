#!/usr/bin/env python3
"""Two LoRA adapters of one base as one: their weight updates mixed, exactly, as a LoRA of twice the rank.

``w * delta_1 + (1 - w) * delta_2`` where ``delta_i = s * B_i A_i`` (``s = lora_alpha / r``, the same for both) is
itself a LoRA update of rank ``r_1 + r_2``: ``A = [A_1; A_2]`` stacked, ``B = [w B_1, (1 - w) B_2]`` side by side,
``lora_alpha`` scaled with the rank so that ``s`` stays. Averaging the A and B matrices of two adapters would not give
this (their products mix). The output takes the first adapter's other files (template, tokenizer, metadata); its
calibration is dropped (calibrate it again). A weight-space mix of two fine-tunes of one starting point (a "model
soup") often keeps much of each one's strengths.

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


def soup(first: Path, second: Path, weight: float, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    check_separate([first, second], out)
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (first, second)]
    same = ("lora_alpha", "r", "use_rslora", "use_dora", "base_model_name_or_path")
    if any(configs[0].get(k) != configs[1].get(k) for k in same) or set(configs[0]["target_modules"]) != set(configs[1]["target_modules"]):
        sys.exit(f"error: {first} and {second} differ in {[k for k in same if configs[0].get(k) != configs[1].get(k)] or 'target_modules'}: "
                 "a soup needs adapters of one base, rank, alpha and target modules")
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
    with atomic_dir(out, ARTIFACT) as tmp:
        for f in first.iterdir():
            if f.is_file() and f.name not in ("adapter_model.safetensors", "adapter_config.json", "loss_curve.png"):
                shutil.copy2(f, tmp / f.name)
        r = configs[0]["r"]
        config = {**configs[0], "r": 2 * r, "lora_alpha": 2 * configs[0]["lora_alpha"]}
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        save_file(mixed, str(tmp / "adapter_model.safetensors"))
        meta = read_adapter_meta(tmp)
        write_adapter_meta(tmp, dataclasses.replace(meta, abstention=None))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--weight", type=float, default=0.5, help="the first adapter's share of the update, in [0, 1]")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    if not 0 <= args.weight <= 1:
        sys.exit(f"error: --weight is {args.weight}: use a share in [0, 1]")
    try:
        soup(Path(args.first), Path(args.second), args.weight, Path(args.output))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(f"{args.output}: {args.weight} x {args.first} + {1 - args.weight:g} x {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
