"""Folders written by hf_lottery 0.1.0 (the code before the package was reorganised) still load.

`tests/fixtures/format_0_1/` was written by 0.1.0 from `tiny_model(seed=0)`: a ticket folder (50 % global magnitude),
a sparse model folder with that ticket beside the weights, a checkpoint shrunk by `prune_heads` / `prune_neurons`,
and the logits 0.1.0 computed for the sparse and the shrunk model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hf_lottery import TicketMask, prune
from hf_lottery.structured import pruned_structure
from hf_lottery.testing_utils import tiny_model
from hf_lottery.training.rounds import ticket_beside_weights

FIXTURES = Path(__file__).parent / "fixtures" / "format_0_1"


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURES / "expected_logits.safetensors"))


def _logits(model, expected):
    model.eval()
    ids = expected["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_a_0_1_ticket_loads_as_the_same_mask():
    ticket = TicketMask.from_pretrained(FIXTURES / "ticket")
    assert ticket == prune(tiny_model(seed=0), 0.5)  # the same mask, recomputed by today's code
    config = ticket.config
    assert (config.format_version, config.hf_lottery_version, config.task) == (1, "0.1.0", "sst2")
    assert config.history[0]["metrics"] == {"eval_accuracy": 0.5}


def test_a_0_1_ticket_loads_onto_its_base_and_checks_its_fingerprint(expected):
    ticket = TicketMask.from_pretrained(FIXTURES / "ticket")
    model = ticket.load_model(AutoModelForSequenceClassification, base=tiny_model(seed=0))
    # Equal up to rounding: earlier tests of a session may leave other kernels (threads, determinism) selected.
    torch.testing.assert_close(_logits(model, expected), expected["sparse"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="base weights differ"):
        ticket.load_model(AutoModelForSequenceClassification, base=tiny_model(seed=1))


def test_a_0_1_sparse_folder_loads_with_its_ticket(expected):
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURES / "sparse")
    torch.testing.assert_close(_logits(model, expected), expected["sparse"], rtol=0, atol=1e-6)
    assert TicketMask.from_model_folder(FIXTURES / "sparse") == TicketMask.from_pretrained(FIXTURES / "ticket")
    assert ticket_beside_weights(model) == TicketMask.from_pretrained(FIXTURES / "ticket")  # trainer keeps it


def test_a_0_1_shrunk_checkpoint_loads_shrunk(expected):
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURES / "shrunk")
    assert pruned_structure(model) == {"heads": {0: [1, 3], 1: [0]}, "neurons": {0: [2, 5, 7]}}
    # 0.1.0 computed these with the in-memory shrunk model (sliced, non-contiguous weights): equal up to rounding.
    torch.testing.assert_close(_logits(model, expected), expected["shrunk"], rtol=0, atol=1e-6)
