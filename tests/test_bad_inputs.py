"""Every bad input hf_lottery can receive today: the exact error type, and a message that says what to do.

One table (`CASES`); each row is also a line of the troubleshooting table in docs/scale.md (checked below). Adding a
check to the library: add its row here first.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from glue_tasks import GlueFormatError, load_glue
from hf_lottery import (
    LayerCollapseError,
    LotteryArguments,
    LotteryCallback,
    LotteryTrainer,
    TicketConfig,
    TicketMask,
    apply_ticket_to_peft,
    prune,
)
from hf_lottery.constants import MASK_METADATA_KEY, TICKET_CONFIG_NAME, TICKET_MASK_NAME
from hf_lottery.structured.shrink import normalize_structure
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.ticket.fingerprint import file_sha256
from hf_lottery.training.distributed import check_distributed_setup
from hf_lottery.training.run_state import snapshot_weights
from hf_lottery.utils.io import save_tensors

DOCS = REPO_ROOT / "docs" / "scale.md"


@dataclass
class Case:
    id: str  # also the first cell of the row in docs/scale.md
    run: Callable[[Path], Any]
    error: type[BaseException]
    match: str  # regex over the message: the part that says what to do


def _with_env(env: dict[str, str], fn: Callable, *args: Any, **kwargs: Any) -> Any:
    with mock.patch.dict(os.environ, env):
        return fn(*args, **kwargs)


def _no_backend() -> SimpleNamespace:
    return SimpleNamespace(fsdp=None, deepspeed=None, parallel_mode="ParallelMode.NOT_PARALLEL")


def largs(tmp: Path, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(tmp / "out"),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        save_strategy="no",
        target_sparsity=0.1,
        pruning_rate=0.1,
    )
    values.update(overrides)
    return LotteryArguments(**values)


def trainer(tmp: Path, model=None, train=True, eval_dataset=None, mask=None, **overrides) -> LotteryTrainer:
    return LotteryTrainer(
        model=model or tiny_model(),
        args=largs(tmp, **overrides),
        train_dataset=toy_dataset(16) if train is True else train,
        eval_dataset=eval_dataset,
        mask=mask,
    )


EMPTY = Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def nan_model():
    model = tiny_model()
    with torch.no_grad():
        dict(model.named_parameters())[QUERY][0, 0] = float("nan")
    return model


# -- A finished run whose lottery_state/ the resume cases damage ---------------------------------------------------
_FINISHED: dict[str, Path] = {}


def finished_run(tmp: Path) -> Path:
    """A copy of one finished 2-round run (trained once per test session), in tmp/out."""
    if "dir" not in _FINISHED:
        source = Path(str(tmp) + "_finished")
        trainer(source).train()
        _FINISHED["dir"] = source / "out"
    shutil.copytree(_FINISHED["dir"], tmp / "out")
    return tmp / "out" / "lottery_state"


def resume(tmp: Path, model=None, **overrides):
    trainer(tmp, model=model, **overrides).train(resume_from_checkpoint=True)


def damage(tmp: Path, name: str, content: str | bytes | None):
    state = finished_run(tmp)
    path = state / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    resume(tmp)


def resume_with_other_theta0(tmp: Path):
    """Resume a finished run whose saved θ0 was replaced by other weights of the same shapes."""
    state = finished_run(tmp)
    save_tensors(state / "theta0.safetensors", snapshot_weights(tiny_model(seed=5)))
    resume(tmp)


def state_json(**changes) -> str:
    return json.dumps({"format_version": 1, "round": 1, "phase": "trained", "history": [], **changes})


def plain_trainer(tmp: Path, callback: LotteryCallback) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp / "plain"), max_steps=1, report_to="none", disable_tqdm=True, use_cpu=True
    )
    return Trainer(model=tiny_model(), args=args, train_dataset=toy_dataset(16), callbacks=[callback])


def lora(target_modules):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(task_type="SEQ_CLS", target_modules=target_modules, r=2)
    return peft.get_peft_model(tiny_model(), config)


def lora_dora():
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(
        tiny_model(), peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query"], use_dora=True)
    )


def multi_process_without_ddp(monkeypatch_target):
    import hf_lottery.training.distributed as distributed

    monkeypatch_target.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch_target.setattr(distributed.dist, "get_world_size", lambda: 2)
    check_distributed_setup(SimpleNamespace(parallel_mode="ParallelMode.NOT_PARALLEL", fsdp=None, deepspeed=None))


# -- Untrusted files: a ticket folder, a mask file, a run state, a GLUE file ---------------------------------------
def saved_ticket(tmp: Path) -> Path:
    model = tiny_model(seed=0)
    mask = prune(model, 0.5)
    return mask.with_metadata(TicketConfig.from_model(model, mask).to_dict()).save_pretrained(tmp / "ticket")


def edited_ticket_config(tmp: Path, text: str | bytes | None = None, **changes) -> Path:
    """A saved ticket whose ticket_config.json is replaced by `text`, or updated with `changes`."""
    folder = saved_ticket(tmp)
    path = folder / TICKET_CONFIG_NAME
    if text is None:
        text = json.dumps({**json.loads(path.read_text()), **changes})
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def edited_mask_headers(tmp: Path, edit: Callable[[list], Any]) -> Path:
    """A saved ticket whose mask file's per-tensor headers are edited (and the config re-signed, as an author
    would)."""
    folder = saved_ticket(tmp)
    mask_file = folder / TICKET_MASK_NAME
    with safe_open(str(mask_file), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    headers = json.loads(metadata[MASK_METADATA_KEY])
    edited = edit(headers)
    metadata[MASK_METADATA_KEY] = edited if isinstance(edited, str) else json.dumps(headers)
    save_file(tensors, str(mask_file), metadata=metadata)
    config = json.loads((folder / TICKET_CONFIG_NAME).read_text())
    config["mask_sha256"] = file_sha256(mask_file)
    (folder / TICKET_CONFIG_NAME).write_text(json.dumps(config))
    return folder


def set_header(index: int, **fields):
    def edit(headers: list) -> None:
        headers[index].update(fields)

    return edit


def hostile_load_model(tmp: Path):
    ticket = TicketMask.from_pretrained(
        edited_ticket_config(tmp, base_model_name_or_path="org/base", model_kwargs={"trust_remote_code": True})
    )
    ticket.load_model(AutoModelForSequenceClassification, verify_base=False)


DEEP = "[" * 100_000 + "]" * 100_000


def glue_file(tmp: Path, folder: str, text: str | bytes, task: str):
    (tmp / folder).mkdir(parents=True, exist_ok=True)
    path = tmp / folder / "train.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    load_glue(task, data_dir=tmp, splits="train")


ACCEPTED = "accepted values"
CASES = [
    # LotteryArguments
    Case("target_sparsity >= 1", lambda t: largs(t, target_sparsity=1.0), ValueError, r"fraction in \[0, 1\)"),
    Case("target_sparsity < 0", lambda t: largs(t, target_sparsity=-0.1), ValueError, r"fraction in \[0, 1\)"),
    Case("pruning_rate outside (0, 1)", lambda t: largs(t, pruning_rate=0.0), ValueError, r"must be in \(0, 1\)"),
    Case("unknown pruning_rate_of", lambda t: largs(t, pruning_rate_of="half"), ValueError, ACCEPTED),
    Case("unknown rewind", lambda t: largs(t, rewind="epoch"), ValueError, ACCEPTED),
    Case("rewind='step' without rewind_step", lambda t: largs(t, rewind="step"), ValueError, r"rewind_step=100"),
    Case("rewind_step without rewind='step'", lambda t: largs(t, rewind_step=5), ValueError, r"only used with"),
    Case("unknown pruning_scope", lambda t: largs(t, pruning_scope="local"), ValueError, ACCEPTED),
    Case(
        "unknown pruning_method",
        lambda t: LotteryCallback(largs(t, pruning_method="snip")),
        ValueError,
        r"pruning_method='snip'.*'magnitude'",
    ),
    Case("unknown on_tensor_collapse", lambda t: largs(t, on_tensor_collapse="ignore"), ValueError, ACCEPTED),
    Case("unknown granularity", lambda t: largs(t, granularity="block"), ValueError, ACCEPTED),
    Case("max_tensor_sparsity outside (0, 1]", lambda t: largs(t, max_tensor_sparsity=0.0), ValueError, r"\(0, 1\]"),
    Case("finetune_learning_rate <= 0", lambda t: largs(t, finetune_learning_rate=0.0), ValueError, r"> 0"),
    Case("pruning_interval_steps <= 0", lambda t: largs(t, pruning_interval_steps=0), ValueError, r"positive"),
    # prune() and TicketMask
    Case("prune: sparsity >= 1", lambda t: prune(tiny_model(), 1.0), ValueError, r"fraction in \[0, 1\)"),
    Case("prune: sparsity as percent", lambda t: prune(tiny_model(), 50), ValueError, r"0\.5 prunes half"),
    Case("prune: sparsity NaN", lambda t: prune(tiny_model(), float("nan")), ValueError, r"fraction in \[0, 1\)"),
    Case("prune: sparsity not a number", lambda t: prune(tiny_model(), "0.5"), TypeError, r"must be a float"),
    Case("prune: unknown method", lambda t: prune(tiny_model(), 0.5, method="snip"), ValueError, r"Registered"),
    Case("prune: unknown scope", lambda t: prune(tiny_model(), 0.5, scope="local"), ValueError, r"'global'"),
    Case(
        "prune: max_tensor_sparsity outside (0, 1]",
        lambda t: prune(tiny_model(), 0.5, max_tensor_sparsity=1.5),
        ValueError,
        r"\(0, 1\] or None",
    ),
    Case(
        "prune: unknown on_tensor_collapse",
        lambda t: prune(tiny_model(), 0.5, on_tensor_collapse="ignore"),
        ValueError,
        r"'redistribute'",
    ),
    Case(
        "prune: mask with unknown names",
        lambda t: prune(tiny_model(), 0.5, mask={"encoder.0.weight": torch.ones(2, dtype=torch.bool)}),
        ValueError,
        r"does not have.*same architecture",
    ),
    Case(
        "prune: mask name without prefix",
        lambda t: TicketMask({"pooler.dense.weight": torch.ones(32, 32)}).validate(tiny_model()),
        ValueError,
        r"Did you mean 'bert\.pooler\.dense\.weight'",
    ),
    Case(
        "prune: mask with wrong shapes",
        lambda t: prune(tiny_model(), 0.5, mask={QUERY: torch.ones(4, dtype=torch.bool)}),
        ValueError,
        r"another size",
    ),
    Case(
        "prune: mask not 0/1",
        lambda t: prune(tiny_model(), 0.5, mask={QUERY: torch.full((32, 32), 0.5)}),
        ValueError,
        r"True \(1\) keeps",
    ),
    Case("prune: mask not tensors", lambda t: TicketMask({QUERY: [1, 0]}), TypeError, r"must be a torch\.Tensor"),
    Case("prune: NaN weights", lambda t: prune(nan_model(), 0.5), ValueError, r"lower the learning rate"),
    Case(
        "prune: sparsity below the mask's",
        lambda t: prune(tiny_model(), 0.2, mask=prune(tiny_model(), 0.5)),
        ValueError,
        r"Ask for at least",
    ),
    Case(
        "prune: layer collapse",
        lambda t: prune(tiny_model(), 0.95, scope="layer", max_tensor_sparsity=0.9, on_tensor_collapse="error"),
        LayerCollapseError,
        r"Raise max_tensor_sparsity or lower the sparsity",
    ),
    Case(
        "prune: invalid prune_modules regex",
        lambda t: prune(tiny_model(), 0.5, prune_modules="("),
        ValueError,
        r"invalid regular expression",
    ),
    Case(
        "prune: prune_modules matching nothing",
        lambda t: prune(tiny_model(), 0.5, prune_modules=[r"nothing"]),
        ValueError,
        r"Pass `prune_modules`",
    ),
    Case(
        "model without prunable layers",
        lambda t: prune(torch.nn.Sequential(torch.nn.Embedding(4, 4)), 0.5),
        ValueError,
        r"Pass `prune_modules`",
    ),
    # LotteryTrainer
    Case(
        "LotteryTrainer without LotteryArguments",
        lambda t: LotteryTrainer(model=tiny_model(), args=TrainingArguments(output_dir=str(t), report_to="none")),
        TypeError,
        r"args=LotteryArguments",
    ),
    Case(
        "LotteryTrainer with optimizers=",
        lambda t: LotteryTrainer(
            model=tiny_model(), args=largs(t), optimizers=(torch.optim.SGD([torch.zeros(1)]), None)
        ),
        ValueError,
        r"optimizer_cls_and_kwargs",
    ),
    Case(
        "LotteryTrainer: mask= not a mapping",
        lambda t: trainer(t, mask=torch.ones(3)),
        TypeError,
        r"TicketMask\.from_pretrained",
    ),
    Case(
        "LotteryTrainer: mask sparser than target",
        lambda t: trainer(t, mask=prune(tiny_model(), 0.5), target_sparsity=0.3),
        ValueError,
        r"Raise target_sparsity",
    ),
    Case(
        "LotteryTrainer: mask of another model",
        lambda t: trainer(t, mask={"encoder.0.weight": torch.ones(2, dtype=torch.bool)}).train(),
        ValueError,
        r"same architecture",
    ),
    Case("empty train_dataset", lambda t: trainer(t, train=EMPTY).train(), ValueError, r"Check the split"),
    Case(
        "empty eval_dataset", lambda t: trainer(t, eval_dataset=EMPTY).train(), ValueError, r"non-empty eval_dataset"
    ),
    Case("no train_dataset", lambda t: trainer(t, train=None).train(), ValueError, r"requires a train_dataset"),
    Case(
        "resume without a run",
        lambda t: resume(t),
        ValueError,
        r"call train\(\) without resume_from_checkpoint",
    ),
    Case("resume: state.json not JSON", lambda t: damage(t, "state.json", "{"), ValueError, r"to start over"),
    Case(
        "resume: state.json without keys",
        lambda t: damage(t, "state.json", state_json()),
        ValueError,
        r"to start over",
    ),
    Case(
        "resume: state.json of another version",
        lambda t: damage(t, "state.json", state_json(format_version=99, schedule=[0.0, 0.1])),
        ValueError,
        r"Finish the run with the version that started it",
    ),
    Case(
        "resume: damaged mask file",
        lambda t: damage(t, "mask_round_1.safetensors", b"\x00garbage"),
        ValueError,
        r"damaged.*to start over",
    ),
    Case(
        "resume: missing mask file",
        lambda t: damage(t, "mask_round_1.safetensors", None),
        FileNotFoundError,
        r"to start over",
    ),
    Case(
        "resume with other lottery settings",
        lambda t: (finished_run(t), resume(t, target_sparsity=0.05)),  # a higher one extends the run
        ValueError,
        r"Resume with the settings the run started with, raise only target_sparsity to extend it",
    ),
    Case(
        "resume with another model",
        lambda t: (finished_run(t), resume(t, model=tiny_model(hidden_size=16, intermediate_size=24))),
        ValueError,
        r"resume with the model the run started with",
    ),
    Case(
        "rewind_step never reached",
        lambda t: trainer(t, rewind="step", rewind_step=100).train(),
        ValueError,
        r"Choose a smaller rewind_step",
    ),
    # Distributed
    Case("FSDP1", lambda t: trainer(t, fsdp=True, fsdp_config={"version": 1}), NotImplementedError, r"FSDP1"),
    Case(
        "FSDP2 with a structured granularity",
        lambda t: trainer(t, fsdp=True, granularity="head"),
        NotImplementedError,
        r"granularity='head'.*under FSDP yet",
    ),
    Case(
        "FSDP2 with a scorer that runs the model",
        lambda t: trainer(t, fsdp=True, pruning_method="synflow"),
        NotImplementedError,
        r"pruning_method='synflow' \(only magnitude, random under FSDP\)",
    ),
    Case(
        "FSDP2 with distillation",
        lambda t: trainer(t, fsdp=True, distill_alpha=0.5),
        NotImplementedError,
        r"distillation \(distill_alpha > 0\)",
    ),
    Case(
        "FSDP through accelerate launch (FSDP1 by default)",
        lambda t: _with_env({"ACCELERATE_USE_FSDP": "true"}, check_distributed_setup, _no_backend(), fsdp2=True),
        NotImplementedError,
        r"asks for FSDP1",
    ),
    Case(
        "FSDP in LotteryCallback",
        lambda t: LotteryCallback(largs(t)).on_train_begin(largs(t, fsdp=True), None, None),
        NotImplementedError,
        r"FSDP2 \(`fully_shard`\) in LotteryTrainer only",
    ),
    Case(
        "DeepSpeed",
        lambda t: check_distributed_setup(SimpleNamespace(fsdp=None, deepspeed="ds_config.json")),
        NotImplementedError,
        r"Train with DDP",
    ),
    # LotteryCallback
    Case(
        "LotteryCallback without LotteryArguments",
        lambda t: LotteryCallback(TrainingArguments(output_dir=str(t), report_to="none")),
        TypeError,
        r"LotteryCallback\(LotteryArguments\(",
    ),
    Case(
        "LotteryCallback: rewind='lr' without mask",
        lambda t: LotteryCallback(largs(t, rewind="lr")),
        ValueError,
        r"use LotteryTrainer",
    ),
    Case(
        "LotteryCallback: mask of another model",
        lambda t: plain_trainer(t, LotteryCallback(largs(t), mask={"x.weight": torch.ones(2)})).train(),
        ValueError,
        r"same architecture",
    ),
    # peft
    Case(
        "peft: DoRA over a ticket",
        lambda t: apply_ticket_to_peft(lora_dora(), prune(tiny_model(), 0.5)),
        NotImplementedError,
        r"use_dora=False",
    ),
    Case(
        "peft: LoRA on a pruned embedding",
        lambda t: apply_ticket_to_peft(
            lora(["word_embeddings"]), prune(tiny_model(), 0.5, prune_modules=[r".*word_embeddings\.weight"])
        ),
        NotImplementedError,
        r"Leave that module out",
    ),
    # Untrusted files
    Case(
        "ticket: model_kwargs outside the allow-list",
        hostile_load_model,
        ValueError,
        r"ticket_config\.json asks `from_pretrained` for trust_remote_code=True.*pass the argument yourself",
    ),
    Case(
        "ticket: config nested too deeply",
        lambda t: TicketMask.from_pretrained(edited_ticket_config(t, DEEP)),
        ValueError,
        r"ticket_config\.json: not valid JSON \(nested too deeply\)\. The ticket folder is damaged",
    ),
    Case(
        "ticket: config not UTF-8",
        lambda t: TicketMask.from_pretrained(edited_ticket_config(t, b'{"format_version": 1, "task": "\xff"}')),
        ValueError,
        r"ticket_config\.json: not valid JSON .*save or download it again",
    ),
    Case(
        "ticket: config field of another type",
        lambda t: TicketMask.from_pretrained(edited_ticket_config(t, base_model_name_or_path=["a"])),
        ValueError,
        r"ticket_config\.json: 'base_model_name_or_path' must be a str, got list",
    ),
    Case(
        "ticket: config shape not sizes",
        lambda t: TicketMask.from_pretrained(
            edited_ticket_config(t, prunable_parameters=[{"name": QUERY, "shape": [32.5, 32], "sha256": None}])
        ),
        ValueError,
        r"ticket_config\.json: every entry of 'prunable_parameters' needs",
    ),
    Case(
        "ticket: mask headers nested too deeply",
        lambda t: TicketMask.from_pretrained(edited_mask_headers(t, lambda h: DEEP)),
        ValueError,
        r"ticket_mask\.safetensors: the per-tensor headers .* unreadable \(nested too deeply\)",
    ),
    Case(
        "ticket: mask header name not a string",
        lambda t: TicketMask.from_pretrained(edited_mask_headers(t, set_header(0, name=["x"]))),
        ValueError,
        r"ticket_mask\.safetensors: the per-tensor headers .* string 'name'",
    ),
    Case(
        "ticket: mask header shape huge",
        lambda t: TicketMask.from_pretrained(edited_mask_headers(t, set_header(0, shape=[10**30, 10**30]))),
        ValueError,
        r"ticket_mask\.safetensors, tensor '.*': its shape .* disagrees with the ticket config",
    ),
    Case(
        "ticket: mask header shape not sizes",
        lambda t: TicketMask.from_pretrained(edited_mask_headers(t, set_header(0, shape="32"))),
        ValueError,
        r"ticket_mask\.safetensors, tensor '.*': invalid shape",
    ),
    Case(
        "ticket: mask header counts of another type",
        lambda t: TicketMask.from_pretrained(edited_mask_headers(t, set_header(0, kept=1.5))),
        ValueError,
        r"ticket_mask\.safetensors, tensor '.*': invalid kept count",
    ),
    Case(
        "resume: state.json nested too deeply",
        lambda t: damage(t, "state.json", DEEP),
        ValueError,
        r"state\.json: not valid JSON \(nested too deeply\).*to start over",
    ),
    Case(
        "resume: state.json not UTF-8",
        lambda t: damage(t, "state.json", b'{"format_version": 1, "phase": "\xff"}'),
        ValueError,
        r"state\.json: not valid JSON.*to start over",
    ),
    Case(
        "resume: state.json not an object",
        lambda t: damage(t, "state.json", "[1, 2]"),
        ValueError,
        r"state\.json holds a list, not an object.*to start over",
    ),
    Case(
        "resume: state.json field of another type",
        lambda t: damage(t, "state.json", state_json(round=7, schedule=[0.0, 0.1])),
        ValueError,
        r"state\.json: 'round' must be a round of the schedule.*to start over",
    ),
    # Settings checked when the run is set up
    Case(
        "NaN finetune_learning_rate",
        lambda t: trainer(t, finetune_learning_rate=float("nan")),
        ValueError,
        r"finetune_learning_rate must be a finite number",
    ),
    Case(
        "NaN hydra_learning_rate",
        lambda t: trainer(t, hydra_learning_rate=float("nan")),
        ValueError,
        r"hydra_learning_rate must be a finite number",
    ),
    Case(
        "NaN hydra_adversarial_epsilon",
        lambda t: trainer(t, hydra_adversarial_epsilon=float("nan")),
        ValueError,
        r"hydra_adversarial_epsilon must be a finite number",
    ),
    Case(
        "rewind_step not an integer",
        lambda t: trainer(t, rewind="step", rewind_step=2.5),
        ValueError,
        r"rewind_step must be an integer, got 2\.5",
    ),
    Case(
        "schedule of too many rounds",
        lambda t: trainer(t, target_sparsity=0.9, pruning_rate=1e-6),
        ValueError,
        r"needs 900000 rounds, more than the 1000.*Raise pruning_rate",
    ),
    Case(
        "target_sparsity unreachable under the guard",
        lambda t: trainer(t, target_sparsity=0.9, pruning_rate=0.5, max_tensor_sparsity=0.9).train(),
        ValueError,
        r"target_sparsity=0\.9 cannot be reached: with max_tensor_sparsity=0\.9.*Lower target_sparsity",
    ),
    Case(
        "resume with another rewind",
        lambda t: (finished_run(t), resume(t, rewind="none")),
        ValueError,
        r"rewind: 'pretrained' then, 'none' now.*Resume with the settings the run started with",
    ),
    Case(
        "resume with another pruning_method",
        lambda t: (finished_run(t), resume(t, pruning_method="random")),
        ValueError,
        r"pruning_method: 'magnitude' then, 'random' now",
    ),
    Case(
        "resume with another learning_rate",
        lambda t: (finished_run(t), resume(t, learning_rate=1e-3)),
        ValueError,
        r"learning_rate: 5e-05 then, 0\.001 now",
    ),
    Case(
        "resume with another prune_modules",
        lambda t: (finished_run(t), resume(t, prune_modules=[r".*encoder.*\.weight"])),
        ValueError,
        r"prune_modules: None then",
    ),
    Case(
        "resume with another theta0",
        lambda t: resume_with_other_theta0(t),
        ValueError,
        r"θ0 \(the weights saved when the run started\) changed",
    ),
    Case(
        "pruned_heads layer twice",
        lambda t: normalize_structure({"0": [1], "00": [2]}, "pruned_heads", num_layers=2, group_size=4),
        ValueError,
        r"layer 0 appears twice \('00'",
    ),
    Case(
        "GLUE: TSV file not UTF-8",
        lambda t: glue_file(t, "SST-2", b"sentence\tlabel\nfine\t1\nbad \xff\t0\n", "sst2"),
        GlueFormatError,
        r"train\.tsv, line 3: not UTF-8",
    ),
    Case(
        "GLUE: TSV field too long",
        lambda t: glue_file(t, "SST-2", "sentence\tlabel\nfine\t1\n" + "x" * 200_000 + "\t0\n", "sst2"),
        GlueFormatError,
        r"train\.tsv, line 3: unreadable as TSV \(field larger than field limit",
    ),
    Case(
        "GLUE: STS-B score out of range",
        lambda t: glue_file(t, "STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\tnan\n", "stsb"),
        GlueFormatError,
        r"train\.tsv, line 2: label 'nan' is not a score in \[0, 5\]",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path):
    with pytest.raises(case.error, match=case.match):
        case.run(tmp_path)


def test_multi_process_without_ddp(monkeypatch):
    with pytest.raises(ValueError, match=r"use_cpu=True"):
        multi_process_without_ddp(monkeypatch)


def test_every_case_is_in_the_troubleshooting_table():
    text = DOCS.read_text(encoding="utf-8")
    missing = [c.id for c in CASES if f"| {c.id} |" not in text]
    assert not missing, f"docs/scale.md lacks troubleshooting rows for: {missing}"
