"""TicketMask: invariants, figures, validation, application."""

from __future__ import annotations

import pytest
import torch

from hf_lottery import TicketMask, prune
from hf_lottery.testing_utils import tiny_model


def test_figures_and_report():
    mask = TicketMask({"a": torch.tensor([[1, 0], [0, 0]]), "b": torch.ones(3, dtype=torch.bool)})
    assert mask["a"].dtype == torch.bool
    assert (mask.num_params, mask.num_kept, mask.num_pruned) == (7, 4, 3)
    assert mask.sparsity == pytest.approx(3 / 7) and mask.density == pytest.approx(4 / 7)
    report = mask.report()
    assert report["a"] == {"numel": 4, "kept": 1, "sparsity": 0.75}
    assert report["__total__"]["kept"] == 4


def test_rejects_non_binary_values():
    with pytest.raises(ValueError, match="other than 0 and 1"):
        TicketMask({"a": torch.tensor([0.0, 0.5])})


def test_validate_names_first_mismatch():
    model = tiny_model()
    mask = prune(model, 0.5)
    other = tiny_model(hidden_size=16, num_attention_heads=2)
    with pytest.raises(ValueError, match="Shape mismatch for 'bert.encoder.layer.0.attention.self.query.weight'"):
        mask.apply_(other)
    renamed = TicketMask({"encoder.layer.0.attention.self.query.weight": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not have.*Did you mean"):
        renamed.validate(model)


def test_apply_zeroes_exactly_the_pruned_weights():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = prune(model, 0.6)
    mask.apply_(model)
    for name, p in model.named_parameters():
        if name in mask:
            assert torch.equal(p[~mask[name]], torch.zeros_like(p[~mask[name]]))
            assert torch.equal(p[mask[name]], before[name][mask[name]])
        else:
            assert torch.equal(p, before[name])
