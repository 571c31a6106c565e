"""One seeded LotteryTrainer run on a tiny model; prints its history and a digest of its ticket (as JSON)."""

import hashlib
import json
import sys

import torch

from hf_lottery import LotteryArguments, LotteryTrainer
from hf_lottery.testing_utils import tiny_model, toy_dataset

output_dir = sys.argv[1]
args = LotteryArguments(
    output_dir=output_dir,
    num_train_epochs=1,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    target_sparsity=0.5,
    pruning_rate=0.25,
    eval_strategy="epoch",
    save_strategy="no",
    report_to=[],
    disable_tqdm=True,
    use_cpu=True,
    seed=11,
    full_determinism=True,
)
trainer = LotteryTrainer(
    model=tiny_model(seed=1), args=args, train_dataset=toy_dataset(64), eval_dataset=toy_dataset(32, seed=1)
)
trainer.train()
digest = hashlib.sha256()
for name, keep in trainer.ticket.items():
    digest.update(name.encode())
    digest.update(keep.to(torch.uint8).numpy().tobytes())
weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
history = [{k: r[k] for k in ("round", "sparsity", "metrics", "train_loss", "steps")} for r in trainer.lottery_history]
print(json.dumps({"history": history, "ticket": digest.hexdigest(), "weights": weights}))
