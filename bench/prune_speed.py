"""prune() vs torch.nn.utils.prune.global_unstructured on a BERT-base-shaped model (110M parameters).

Both prune the same tensors (the default set: every encoder Linear weight and the pooler) to the same global
L1 sparsity. Runs alternate in one process; the median of `--repeats` runs is reported. torch's figure includes
what its API does besides choosing the weights (weight_orig copies and forward pre-hooks); ours returns the mask.

    python bench/prune_speed.py --sparsity 0.5 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import machine
from torch.nn.utils import prune as torch_prune
from transformers import BertConfig, BertModel

from hf_lottery import TicketMask, default_prunable_names, prune


def _check_agreement(weights, ours: TicketMask, theirs: TicketMask) -> None:
    """Same count; where the masks differ, the weights tie at the threshold (torch.topk breaks ties its own way)."""
    assert ours.num_pruned == theirs.num_pruned
    kept_min = min(float(w[ours[n]].min()) for n, w in weights.items() if ours[n].any())
    pruned_max = max(float(w[~ours[n]].max()) for n, w in weights.items() if (~ours[n]).any())
    assert pruned_max <= kept_min
    differing = [w[ours[n] != theirs[n]] for n, w in weights.items()]
    values = torch.cat(differing)
    assert bool((values == pruned_max).all()), "masks differ away from the threshold"
    _check_agreement.ties = values.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()

    torch.manual_seed(0)
    model = BertModel(BertConfig())  # bert-base shape: 12 layers, hidden 768, 110M parameters
    names = default_prunable_names(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_prunable = sum(dict(model.named_parameters())[n].numel() for n in names)
    print(f"model: {n_params / 1e6:.1f}M parameters, {n_prunable / 1e6:.1f}M prunable; {machine()}")

    ours_times, torch_times = [], []
    for _ in range(opts.repeats):
        start = time.perf_counter()
        mask = prune(model, opts.sparsity, max_tensor_sparsity=None)
        ours_times.append(time.perf_counter() - start)

        modules = dict(model.named_modules())
        targets = [(modules[n.rsplit(".", 1)[0]], "weight") for n in names]
        start = time.perf_counter()
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=opts.sparsity)
        torch_times.append(time.perf_counter() - start)
        reference = TicketMask({n: modules[n.rsplit(".", 1)[0]].weight_mask.bool() for n in names})
        model_weights = {n: modules[n.rsplit(".", 1)[0]].weight_orig.detach().abs() for n in names}
        for module, name in targets:
            torch_prune.remove(module, name)
        # remove() bakes the zeros in; restore the dense weights for the next repeat
        with torch.no_grad():
            torch.manual_seed(0)
            fresh = BertModel(BertConfig())
            model.load_state_dict(fresh.state_dict())
        _check_agreement(model_weights, mask, reference)

    ours, theirs = statistics.median(ours_times), statistics.median(torch_times)
    print(
        f"sparsity {opts.sparsity}: prune() {ours:.3f} s, torch global_unstructured {theirs:.3f} s, "
        f"speed-up {theirs / ours:.2f}x (median of {opts.repeats}; same count; masks differ only in "
        f"{getattr(_check_agreement, 'ties', 0)} weights tied at the threshold)"
    )


if __name__ == "__main__":
    main()
