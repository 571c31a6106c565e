"""What a learned mask is worth before any retraining: HYDRA against magnitude pruning on a fine-tuned model.

Takes the trained dense round 0 of a `bench/quality.py` cache, masks it at `--sparsity` by global and per-tensor
magnitude and by HYDRA's scores (one epoch over the cache's training batches, weights frozen, the optimizers given),
and evaluates each masked model on the dev set with no retraining. It also prints the fraction of each HYDRA mask's
pruned weights that magnitude pruning of the same scope prunes too (how far learning moved the mask). Every mask
uses `prune()`'s defaults otherwise (prunable set, layer-collapse guard).

    python bench/hydra_masks.py --cache bench/_cache/var-global --task sst2 --train-samples 8000 --sparsity 0.6
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from _common import machine
from mask_overlap import pruned_overlap
from quality import build, trained_weights
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from hf_lottery import TicketMask, prune
from hf_lottery.training.run_state import load_weights_

VARIANTS = {  # name: prune() keyword arguments
    "magnitude, global": {"method": "magnitude", "scope": "global"},
    "magnitude, per tensor": {"method": "magnitude", "scope": "layer"},
    "hydra, global, adam 0.01": {"method": "hydra", "scope": "global", "optimizer": "adam", "learning_rate": 0.01},
    "hydra, per tensor, adam 0.01": {"method": "hydra", "scope": "layer", "optimizer": "adam", "learning_rate": 0.01},
    "hydra, global, sgd 0.1": {"method": "hydra", "scope": "global", "optimizer": "sgd", "learning_rate": 0.1},
}


@torch.no_grad()
def accuracy(model: torch.nn.Module, mask: TicketMask, dev, collator) -> float:
    masked = mask.apply_(copy.deepcopy(model)).eval()
    right = total = 0
    for batch in DataLoader(dev, batch_size=64, collate_fn=collator):
        right += int((masked(**batch).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a bench/quality.py cache (the folder holding TASK/)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.6)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the table as JSON here")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    _, data, model_init, collator, _ = build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)
    model = model_init()
    load_weights_(model, load_file(str(trained_weights(Path(opts.cache) / opts.task / "dense_seed0", 0))))
    model.eval()
    dev = data["validation"]
    rows: dict[str, dict] = {"dense": {"accuracy": accuracy(model, prune(model, 0.0), dev, collator)}}
    print(f"dense: {100 * rows['dense']['accuracy']:.2f}")
    masks = {}
    for name in opts.variants:
        kwargs = dict(VARIANTS[name])
        if kwargs["method"] == "hydra":
            generator = torch.Generator().manual_seed(0)
            kwargs["dataloader"] = DataLoader(
                data["train"], batch_size=32, shuffle=True, generator=generator, collate_fn=collator
            )
            kwargs["seed"] = 0
        start = time.time()
        masks[name] = prune(model, opts.sparsity, **kwargs)
        row = {"accuracy": accuracy(model, masks[name], dev, collator), "seconds": time.time() - start}
        reference = masks.get(f"magnitude, {'per tensor' if kwargs['scope'] == 'layer' else 'global'}")
        if kwargs["method"] == "hydra" and reference is not None:
            row["pruned_also_by_magnitude"] = pruned_overlap(reference, masks[name])
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    if opts.output:
        table = {"machine": machine(), "config": vars(opts), "sparsity": opts.sparsity, "rows": rows}
        Path(opts.output).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
