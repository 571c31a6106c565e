"""Ticket controls: random pruning like the ticket, random re-initialization, transfer to another task."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertModel
from transformers.utils import logging

from hf_lottery import TicketMask, prune, random_pruning_like, reinitialize_survivors, transfer_ticket
from hf_lottery.testing_utils import tiny_config, tiny_model


@pytest.fixture
def ticket():
    model = tiny_model("bert")
    return prune(model, 0.6, max_tensor_sparsity=None)


def _kept(mask: TicketMask) -> dict[str, int]:
    return {name: row["kept"] for name, row in mask.report().items()}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_random_pruning_keeps_the_per_tensor_sparsity(family):
    model = tiny_model(family)
    ticket = prune(model, 0.6, max_tensor_sparsity=None)
    control = random_pruning_like(ticket, model, seed=1)
    assert _kept(control) == _kept(ticket)
    assert control != ticket
    assert control == random_pruning_like(ticket, model, seed=1)
    assert control != random_pruning_like(ticket, model, seed=2)
    assert control.metadata["branch"] == {"name": "random_prune", "seed": 1, "strategy": "layerwise"}


def test_random_pruning_global_strategy(ticket):
    control = random_pruning_like(ticket, tiny_model(), seed=0, strategy="global")
    assert control.num_pruned == ticket.num_pruned
    assert _kept(control) != _kept(ticket)
    with pytest.raises(ValueError, match="strategy"):
        random_pruning_like(ticket, tiny_model(), strategy="even")


def test_random_pruning_checks_the_model(ticket):
    with pytest.raises(ValueError, match="Shape mismatch"):
        random_pruning_like(ticket, tiny_model(hidden_size=16, num_attention_heads=2), seed=0)


def test_reinitialize_survivors():
    model = tiny_model("bert")
    ticket = prune(model, 0.6, max_tensor_sparsity=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.random.get_rng_state()
    out = reinitialize_survivors(model, ticket, seed=5)
    assert out is model
    assert torch.equal(torch.random.get_rng_state(), rng)
    params = dict(model.named_parameters())
    survivors = []
    for name, p in params.items():
        if name not in ticket:
            assert torch.equal(p, before[name]), f"{name} is outside the ticket and must not change"
            continue
        keep = ticket[name]
        assert (p[~keep] == 0).all()
        assert not torch.equal(p[keep], before[name][keep])
        survivors.append(p[keep].detach())
    std = torch.cat(survivors).std().item()
    assert std == pytest.approx(model.config.initializer_range, rel=0.1)

    again = reinitialize_survivors(tiny_model("bert"), ticket, seed=5)
    other = reinitialize_survivors(tiny_model("bert"), ticket, seed=6)
    name = next(iter(ticket))
    assert torch.equal(dict(again.named_parameters())[name], params[name])
    assert not torch.equal(dict(other.named_parameters())[name], params[name])


def test_reinitialize_survivors_roberta():
    model = tiny_model("roberta")
    ticket = prune(model, 0.5)
    reinitialize_survivors(model, ticket, seed=0)
    assert prune(model, 0.5, mask=ticket) == ticket  # still the same positions, zeros in place
    assert all((dict(model.named_parameters())[n][~m] == 0).all() for n, m in ticket.items())


def test_transfer_to_a_new_head(ticket):
    model_b = tiny_model("bert", seed=3, num_labels=3)
    head = model_b.classifier.weight.detach().clone()
    mask = transfer_ticket(ticket, model_b)
    assert mask == ticket and mask.metadata["branch"] == {"name": "transfer"}
    params = dict(model_b.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in mask.items())
    assert torch.equal(model_b.classifier.weight, head)


def test_transfer_across_model_classes(ticket):
    token_model = AutoModelForTokenClassification.from_config(tiny_config(num_labels=5))
    # a token-classification BERT has no pooler: the pooler's entry cannot be placed
    with pytest.raises(ValueError, match="bert.pooler.dense.weight"):
        transfer_ticket(ticket, token_model)
    encoder_only = TicketMask({n: m for n, m in ticket.items() if "pooler" not in n})
    assert transfer_ticket(encoder_only, token_model) == encoder_only

    bare = BertModel(tiny_config())
    mask = transfer_ticket(ticket, bare)
    assert set(mask) == {n.removeprefix("bert.") for n in ticket}
    assert mask.num_pruned == ticket.num_pruned


def test_transfer_refuses_head_and_shape_mismatches(ticket):
    with pytest.raises(ValueError, match="Shape mismatch"):
        transfer_ticket(ticket, tiny_model(hidden_size=16, num_attention_heads=2))
    model = tiny_model()
    with_head = prune(model, 0.5, prune_modules=[r".*dense\.weight", r"classifier\.weight"])
    with pytest.raises(ValueError, match="task head"):
        transfer_ticket(with_head, tiny_model(seed=1))


def test_transfer_warns_about_uncovered_tensors(ticket, caplog):
    partial = TicketMask({n: m for n, m in ticket.items() if "layer.0." in n})
    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            transfer_ticket(partial, tiny_model(seed=2))
    finally:
        logging.disable_propagation()
    assert "stay dense" in caplog.text
