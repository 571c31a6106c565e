"""2:4 tickets exported to torch's semi-structured sparse tensors (the export itself needs CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_lottery import prune
from hf_lottery.integrations.semi_structured import has_2_4_pattern, to_semi_structured
from hf_lottery.testing_utils import tiny_model


def test_a_2_4_ticket_has_the_pattern_the_kernels_need():
    model = tiny_model()
    mask = prune(model, 0.5, scope="2:4", max_tensor_sparsity=None)
    mask.apply_(model)
    weights = dict(model.named_parameters())
    assert all(has_2_4_pattern(weights[name].detach()) for name in mask)
    assert not has_2_4_pattern(torch.ones(4, 8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_export_refuses_without_cuda():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="need CUDA"):
        to_semi_structured(model, prune(model, 0.5, scope="2:4"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_export_gives_the_dense_outputs_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).half().cuda().eval()
    mask = prune(model, 0.5, scope="2:4", max_tensor_sparsity=None)
    mask.apply_(model)
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    with torch.no_grad():
        dense = model(x)
        to_semi_structured(model, mask)
        sparse = model(x)
    assert isinstance(model[0].weight.data, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(sparse, dense, rtol=1e-2, atol=1e-2)
