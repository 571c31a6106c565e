"""Does load on the machine change a seeded run's numbers? Same training, same seed, different conditions.

Each trial fine-tunes all-MiniLM-L6-v2 on the first `--samples` SST-2 training sentences for `--steps` steps
(Trainer, seed 42, dropout on, batch 32, max length 64) in a fresh process and records the sha256 of every final
weight, the final loss and the load average. Conditions, in one run:
  quiet        - `--threads` torch threads, nothing else running (beyond what the machine already runs)
  loaded       - the same while `--busy` busy-loop processes compete for the cores
  loaded-nodyn - loaded, with MKL_DYNAMIC=FALSE and OMP_DYNAMIC=FALSE (MKL/OpenMP may not shrink their teams)
  threads-1    - one torch thread, quiet
  full-det     - quiet, `full_determinism=True`
Trials with equal digests trained bit-identical networks.

    python bench/reproducibility.py --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

CONDITIONS = {
    "quiet": ({}, 0, None, False),
    "loaded": ({}, None, None, False),
    "loaded-nodyn": ({"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}, None, None, False),
    "threads-1": ({}, 0, 1, False),
    "full-det": ({}, 0, None, True),
}


def trial(opts) -> dict:
    """One training in this process; returns its digest, final loss and the load it ran under."""
    import torch
    from _common import minilm_classifier
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_utils import set_seed

    from glue_tasks import get_task, load_glue

    torch.set_num_threads(opts.threads)
    set_seed(42)  # before the model: its new classification head comes from the global RNG
    model, _ = minilm_classifier()
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    data = load_glue(get_task("sst2"), data_dir=opts.glue_dir, splits=["train"], max_samples=opts.samples, seed=0)
    rows = data["train"]
    encoded = tokenizer(list(rows["sentence"]), truncation=True, max_length=64)
    train = Dataset.from_dict({**encoded, "labels": list(rows["label"])})
    args = TrainingArguments(
        output_dir=opts.tmp,
        max_steps=opts.steps,
        per_device_train_batch_size=32,
        learning_rate=5e-5,
        seed=42,
        full_determinism=opts.full_determinism,
        report_to=[],
        save_strategy="no",
        logging_steps=opts.steps,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        use_cpu=True,
    )
    start = time.time()
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    loss = trainer.train().training_loss
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode() + param.detach().contiguous().numpy().tobytes())
    return {
        "digest": digest.hexdigest()[:16],
        "train_loss": loss,
        "seconds": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
        "load_after": os.getloadavg()[0],
    }


def _busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes of the loaded trials")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--out", default=str(Path(__file__).with_name("_cache") / "reproducibility.jsonl"))
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full-determinism", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp/hf_lottery_repro", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.trial:
        print("TRIAL " + json.dumps(trial(opts)))
        return
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for repeat in range(opts.repeats):
        for name in opts.conditions:
            env_extra, busy, threads, full_det = CONDITIONS[name]
            busy = opts.busy if busy is None else busy
            workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(busy)]
            for w in workers:
                w.start()
            load_before = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--trial", "--steps", str(opts.steps), "--samples", str(opts.samples)]
            cmd += ["--threads", str(threads or opts.threads), "--glue-dir", opts.glue_dir]
            cmd += ["--full-determinism"] if full_det else []
            proc = subprocess.run(cmd, env={**os.environ, **env_extra}, capture_output=True, text=True)
            for w in workers:
                w.terminate()
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("TRIAL ")), None)
            if line is None:
                raise SystemExit(f"trial {name} failed:\n{proc.stderr[-3000:]}")
            record = {"condition": name, "repeat": repeat, "busy": busy, "load_before": load_before}
            record.update(json.loads(line.removeprefix("TRIAL ")), env=env_extra)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    report(out)


def report(out: Path) -> None:
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(r["digest"], []).append(f"{r['condition']}#{r['repeat']}")
    print("\nbit-identical groups (weights sha256):")
    for digest, members in groups.items():
        losses = {round(r["train_loss"], 6) for r in records if r["digest"] == digest}
        print(f"  {digest}: {', '.join(members)}  (train loss {', '.join(map(str, sorted(losses)))})")


if __name__ == "__main__":
    main()
