"""prune() and the selector: exact counts, nesting, ordering, scope, the layer-collapse guard, torch agreement."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from hf_lottery import LayerCollapseError, TicketMask, default_prunable_names, prune, select_mask
from hf_lottery.testing_utils import tiny_model


def _pruned_values(model, mask):
    params = dict(model.named_parameters())
    kept = torch.cat([params[n].detach().abs()[m] for n, m in mask.items()])
    pruned = torch.cat([params[n].detach().abs()[~m] for n, m in mask.items()])
    return kept, pruned


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.8])
def test_global_magnitude_exact_count_and_order(family, sparsity):
    model = tiny_model(family)
    mask = prune(model, sparsity, max_tensor_sparsity=None)
    assert mask.num_pruned == round(sparsity * mask.num_params)
    kept, pruned = _pruned_values(model, mask)
    if pruned.numel():
        assert kept.min() >= pruned.max()


def test_default_set_never_masks_embeddings_layernorm_biases_or_head():
    for family in ("bert", "roberta"):
        model = tiny_model(family)
        names = default_prunable_names(model)
        assert names, family
        for name in names:
            assert name.endswith(".weight")
            assert "embeddings" not in name and "LayerNorm" not in name and "classifier" not in name
        linear_weights = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        encoder = [n for n in linear_weights if ".encoder." in f".{n}"]
        assert {f"{n}.weight" for n in encoder} <= set(names)
    assert any("pooler" in n for n in default_prunable_names(tiny_model("bert")))


def test_iterative_masks_are_nested_and_keep_pruned_weights_pruned():
    model = tiny_model()
    previous = None
    for sparsity in (0.2, 0.4, 0.6, 0.8):
        mask = prune(model, sparsity, mask=previous)
        assert mask.num_pruned == round(sparsity * mask.num_params)
        if previous is not None:
            assert mask.is_subset_of(previous)
        mask.apply_(model)
        # perturb surviving weights so the next ranking differs from the first one
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        mask.apply_(model)
        previous = mask


def test_lower_sparsity_than_current_mask_is_refused():
    model = tiny_model()
    mask = prune(model, 0.5)
    with pytest.raises(ValueError, match="below the current mask"):
        prune(model, 0.3, mask=mask)


def test_layer_scope_prunes_each_tensor_alike():
    model = tiny_model()
    mask = prune(model, 0.3, scope="layer")
    for name, row in mask.report().items():
        if name != "__total__":
            assert row["numel"] - row["kept"] == round(0.3 * row["numel"])


def test_ties_are_broken_by_index_deterministically():
    scores = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    mask = select_mask(scores, 0.5, max_tensor_sparsity=None)
    assert mask.num_pruned == round(0.5 * 17)
    flat = torch.cat([mask["a"].flatten(), mask["b"]])
    # the first weights in tensor order are pruned first
    assert not flat[: mask.num_pruned].any() and flat[mask.num_pruned :].all()
    assert select_mask(scores, 0.5, max_tensor_sparsity=None) == mask


def test_random_is_seeded_and_independent_of_global_rng():
    model = tiny_model()
    a = prune(model, 0.5, method="random", seed=3)
    torch.manual_seed(123)
    b = prune(model, 0.5, method="random", seed=3)
    c = prune(model, 0.5, method="random", seed=4)
    assert a == b and a != c
    assert a.num_pruned == round(0.5 * a.num_params)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_agrees_with_torch_global_unstructured(family):
    model = tiny_model(family)
    names = default_prunable_names(model)
    ours_first = prune(model, 0.3, max_tensor_sparsity=None)
    ours = prune(model, 0.6, mask=ours_first, max_tensor_sparsity=None)

    reference = tiny_model(family)
    modules = dict(reference.named_modules())
    targets = [(modules[n.rsplit(".", 1)[0]], "weight") for n in names]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.3)
    first = {n: modules[n.rsplit(".", 1)[0]].weight_mask.bool() for n in names}
    assert TicketMask(first) == ours_first
    # torch's iterative step prunes a count of the remaining weights
    extra = ours.num_pruned - ours_first.num_pruned
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=extra)
    second = {n: modules[n.rsplit(".", 1)[0]].weight_mask.bool() for n in names}
    assert TicketMask(second) == ours


def _small_pooler_model():
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(0.01)
    return model


def test_layer_collapse_happens_without_the_guard():
    model = _small_pooler_model()
    mask = prune(model, 0.5, max_tensor_sparsity=None)
    assert mask.report()["bert.pooler.dense.weight"]["kept"] == 0


def test_layer_collapse_guard_redistributes_by_default():
    model = _small_pooler_model()
    mask = prune(model, 0.5)
    report = mask.report()
    assert mask.num_pruned == round(0.5 * mask.num_params)
    assert report["bert.pooler.dense.weight"]["sparsity"] <= 0.9 + 1e-9
    assert all(row["kept"] > 0 for row in report.values())
    # the capped tensor keeps its largest weights
    w = model.bert.pooler.dense.weight.detach().abs()
    m = mask["bert.pooler.dense.weight"]
    assert w[m].min() >= w[~m].max()


def test_layer_collapse_guard_error_and_warn():
    model = _small_pooler_model()
    with pytest.raises(LayerCollapseError, match="bert.pooler.dense.weight"):
        prune(model, 0.5, on_tensor_collapse="error")
    mask = prune(model, 0.5, on_tensor_collapse="warn")
    assert mask.report()["bert.pooler.dense.weight"]["kept"] == 0


def test_guard_refuses_an_impossible_target():
    model = tiny_model()
    with pytest.raises(LayerCollapseError, match="raise max_tensor_sparsity"):
        prune(model, 0.95, max_tensor_sparsity=0.9)
    with pytest.raises(LayerCollapseError):
        prune(model, 0.95, scope="layer", max_tensor_sparsity=0.9)


def test_prune_modules_regexes_select_parameters():
    model = tiny_model()
    mask = prune(model, 0.5, prune_modules=[r".*attention\.self\.query\.weight"])
    assert len(mask) == 2 and all("query" in n for n in mask)
    with pytest.raises(ValueError, match="No prunable parameters"):
        prune(model, 0.5, prune_modules=["nothing.matches"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        prune(model, 0.5, prune_modules=["(unclosed"])


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ValueError, match="magnitude.*random|Registered methods"):
        prune(tiny_model(), 0.5, method="nope")


def test_a_mask_from_prune_records_its_base_and_loads_the_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hf_lottery import save_sparse_model

    base = tmp_path / "base"
    tiny_model(seed=3).save_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    mask = prune(model, 0.5)
    config = mask.config
    assert config.base_model_name_or_path == str(base)
    assert config.architecture == "BertForSequenceClassification" and config.model_kwargs == {"num_labels": 2}
    assert config.base_fingerprint and config.pruning_method == "magnitude"
    for folder, save in (
        (tmp_path / "ticket", lambda d: mask.save_pretrained(d)),
        (tmp_path / "sparse", lambda d: save_sparse_model(model, mask, d)),
    ):
        save(folder)
        loaded = TicketMask.from_pretrained(folder).load_model(AutoModelForSequenceClassification)
        params = dict(loaded.named_parameters())
        for name, weight in model.named_parameters():
            expected = weight * mask[name] if name in mask else weight
            assert torch.equal(params[name], expected), name
    # pruning further keeps what the first mask was found on
    assert prune(model, 0.7, mask=mask).config.base_fingerprint == config.base_fingerprint


def test_default_prunable_set_beyond_bert():
    from transformers import (
        AlbertConfig,
        AlbertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    names = default_prunable_names(gpt2)
    assert names == [f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    mask = prune(gpt2, 0.5)  # GPT-2's projections are Conv1D
    assert mask.sparsity == pytest.approx(0.5, abs=1e-3)
    t5 = T5ForConditionalGeneration(
        T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=50, tie_word_embeddings=False)
    )
    t5_names = default_prunable_names(t5)
    assert "lm_head.weight" not in t5_names and "encoder.block.0.layer.0.SelfAttention.q.weight" in t5_names
    albert = AlbertForSequenceClassification(
        AlbertConfig(
            embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    albert_names = default_prunable_names(albert)
    assert not [n for n in albert_names if "embedding" in n]
    assert "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight" in albert_names


def test_no_prunable_parameters_error_names_the_models_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(ValueError, match=r"No prunable parameters.*weight matrices include '0\.weight'"):
        prune(model, 0.5)
