"""Fault tolerance of LotteryTrainer: SIGKILL a short lottery run at many points, resume it, compare.

For each kill point, a child process runs the lottery and is killed with SIGKILL; a second child resumes it with
`train(resume_from_checkpoint=True)` and compares the final ticket (mask equality) and the history (rounds,
sparsities, eval metrics, train loss, steps; not timings) with an uninterrupted run's.

Kill points come in two kinds, both from a seeded generator:

- `event`: the k-th of the run's events, counted in the child: every Trainer callback event, every atomic write of
  hf_lottery (killed after the temporary file is written, before it replaces the target), the start of a
  checkpoint's optimizer save (model written, optimizer not), and the Trainer's `trainer_state.json` write, which
  is not atomic: there the child writes half of the file and dies (a torn write);
- `time`: the parent kills the child after a random delay (anywhere, mid-write included).

The parent imports the libraries once and forks a child per attempt (a forked child starts in milliseconds);
children run with one intra-op thread.

    python bench/fault_tolerance.py --points 20                       # 20 kill points, printed as a table
    python bench/fault_tolerance.py --points 5 --time-points 0 --json out.json   # what tests/ runs in CI

Exit status 0 when every resumed run matched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hf_lottery.testing_utils import tiny_model, toy_dataset  # noqa: E402

# One intra-op thread (conftest sets two): set before any fork, so the parent never starts a thread pool, and
# cheaper than two threads fighting for a busy machine's cores.
torch.set_num_threads(1)
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback, TrainerState  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_lottery.ticket.history  # noqa: E402
import hf_lottery.utils.io  # noqa: E402
from hf_lottery import LotteryArguments, LotteryTrainer  # noqa: E402
from hf_lottery.constants import LOTTERY_HISTORY_NAME  # noqa: E402
from hf_lottery.training.run_state import RunState  # noqa: E402

TIMING_KEYS = ("seconds",)
TIMING_METRICS = ("_runtime", "_per_second", "_time")  # suffixes: eval_runtime, eval_model_preparation_time...
CALLBACK_EVENTS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_substep_end",
    "on_step_end",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_epoch_end",
    "on_train_end",
)


# -- The run -----------------------------------------------------------------------------------------------------
def lottery_args(output_dir: str, rewind: str = "pretrained", target_sparsity: float = 0.2) -> LotteryArguments:
    return LotteryArguments(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-3,
        target_sparsity=target_sparsity,
        pruning_rate=0.1,  # rounds at 0%, 10%, 20% (by default)
        rewind=rewind,
        save_strategy="steps",
        save_steps=2,
        logging_steps=3,  # not a divisor of save_steps: the running loss is checkpointed between two logs
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        use_cpu=True,
    )


def run_lottery(
    output_dir: str, rewind: str, target_sparsity: float, resume: bool, killer: Killer | None = None
) -> LotteryTrainer:
    resuming = resume and RunState(output_dir).exists()
    # A resumed run must take θ0 from its state, not from the model it is given: give it another one. (Killed
    # before its first state.json, a run starts afresh, from the same model as the reference.)
    model = tiny_model(seed=123 if resuming else 0)
    trainer = LotteryTrainer(
        model=model,
        args=lottery_args(output_dir, rewind, target_sparsity),
        train_dataset=toy_dataset(32, seed=0),
        eval_dataset=toy_dataset(16, seed=1),
    )
    trainer.remove_callback(PrinterCallback)  # quiet children
    if killer is not None:
        trainer.add_callback(killer.callback())
    # A user's restart script: resume when there is a run to resume (a kill before the first state write leaves
    # none, and train(resume_from_checkpoint=True) then refuses).
    trainer.train(resume_from_checkpoint=True if resuming else None)
    return trainer


# -- Killing -----------------------------------------------------------------------------------------------------
class Killer:
    """Counts events in the child and SIGKILLs it at event number `kill_at` (None: never; count only)."""

    def __init__(self, kill_at: int | None):
        self.kill_at = kill_at
        self.count = 0
        self.names: list[str] = []

    def event(self, name: str, torn=None) -> None:
        self.count += 1
        self.names.append(name)
        if self.count == self.kill_at:
            if torn is not None:
                torn()
            os.kill(os.getpid(), signal.SIGKILL)

    def callback(self) -> TrainerCallback:
        killer = self

        class _EventCallback(TrainerCallback):
            pass

        for event in CALLBACK_EVENTS:
            setattr(_EventCallback, event, lambda self, *a, _e=event, **k: killer.event(f"callback:{_e}"))
        return _EventCallback()

    def install(self) -> None:
        """Wrap the writers (in this child process only)."""
        original_atomic = hf_lottery.utils.io.atomic_path

        @contextlib.contextmanager
        def atomic_path(path):
            with original_atomic(path) as tmp:
                yield tmp
                # The temporary file is complete; dying here leaves it beside an untouched target.
                self.event(f"atomic_write:{Path(path).name}")

        hf_lottery.utils.io.atomic_path = atomic_path
        hf_lottery.ticket.history.atomic_path = atomic_path

        original_state_save = TrainerState.save_to_json

        def save_to_json(state, json_path):
            def torn():
                text = json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True)
                Path(json_path).write_text(text[: len(text) // 2], encoding="utf-8")

            self.event("checkpoint:trainer_state.json(torn)", torn)
            return original_state_save(state, json_path)

        TrainerState.save_to_json = save_to_json

        original_opt_save = Trainer._save_optimizer_and_scheduler

        def save_optimizer_and_scheduler(trainer, output_dir):
            self.event("checkpoint:before_optimizer")
            return original_opt_save(trainer, output_dir)

        Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler


# -- Comparing ---------------------------------------------------------------------------------------------------
def comparable_history(output_dir: str) -> list[dict[str, Any]]:
    rounds = json.loads((Path(output_dir) / LOTTERY_HISTORY_NAME).read_text())["rounds"]
    out = []
    for record in rounds:
        record = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        if isinstance(record.get("next_mask"), dict):
            record["next_mask"] = {k: v for k, v in record["next_mask"].items() if k not in TIMING_KEYS}
        record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.endswith(TIMING_METRICS)}
        out.append(record)
    return out


def final_mask(output_dir: str):
    state = RunState(output_dir)
    return state.load_mask(state.read()["round"])


def verdict(output_dir: str, reference_dir: str) -> dict[str, Any]:
    mask, ref_mask = final_mask(output_dir), final_mask(reference_dir)
    history, ref_history = comparable_history(output_dir), comparable_history(reference_dir)
    state = RunState(output_dir).read()
    diff = [
        f"round {a.get('round')}: {k}: {a.get(k)!r} != {b.get(k)!r}"
        for a, b in zip(history, ref_history)
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    return {
        "ticket_equal": mask == ref_mask,
        "sparsity": mask.sparsity,
        "history_equal": history == ref_history,
        "history_diff": diff[:5] if len(history) == len(ref_history) else ["rounds differ"],
        "finished": state["phase"] == "trained" and state["round"] == len(state["schedule"]) - 1,
    }


# -- Driver (parent) ---------------------------------------------------------------------------------------------
def _child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            fn()
        except BaseException as err:  # noqa: BLE001  (report anything; the parent only sees the exit status)
            print(f"child failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            code = 1
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, kill_after: float | None = None) -> tuple[str, float]:
    started = time.time()
    if kill_after is not None:
        deadline = started + kill_after
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _describe(status), time.time() - started
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return _describe(status), time.time() - started


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else f"signal {os.WTERMSIG(status)}"
    return "finished" if os.WEXITSTATUS(status) == 0 else f"failed ({os.WEXITSTATUS(status)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=20, help="event kill points (deterministic)")
    parser.add_argument("--time-points", type=int, default=None, help="timed kill points (default: points // 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rewind", default="pretrained", choices=["pretrained", "step", "lr", "none"])
    parser.add_argument("--target-sparsity", type=float, default=0.2, help="0.2: three rounds; 0.1: two")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    parser.add_argument("--json", default=None, help="write the results here")
    cli = parser.parse_args(argv)
    time_points = cli.points // 4 if cli.time_points is None else cli.time_points
    if cli.rewind == "step":
        parser.error("--rewind step needs rewind_step; use pretrained, lr or none")

    workdir = Path(cli.workdir or tempfile.mkdtemp(prefix="hf_lottery_fault_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cli.seed)
    results: list[dict[str, Any]] = []
    names: list[str] = []
    try:
        # 1. The uninterrupted reference, counting events.
        ref_dir = str(workdir / "reference")
        shutil.rmtree(ref_dir, ignore_errors=True)
        events_file = workdir / "events.json"

        def reference():
            killer = Killer(None)
            killer.install()
            run_lottery(ref_dir, cli.rewind, cli.target_sparsity, resume=False, killer=killer)
            events_file.write_text(json.dumps(killer.names))

        status, ref_seconds = _wait(_child(reference))
        if status != "finished":
            print(f"reference run {status}", file=sys.stderr)
            return 2
        names = json.loads(events_file.read_text())

        # 2. Kill points: the special writes first (torn trainer_state.json, a hf_lottery atomic write), then random.
        torn = [i + 1 for i, n in enumerate(names) if "torn" in n]
        atomic = [i + 1 for i, n in enumerate(names) if n.startswith("atomic_write")]
        points = []
        for pool in (torn, atomic):
            if pool and len(points) < cli.points:
                points.append(rng.choice(pool))
        rest = [k for k in range(1, len(names) + 1) if k not in points]
        points += rng.sample(rest, min(cli.points - len(points), len(rest)))
        plan = [("event", k) for k in sorted(points)]
        plan += [("time", round(rng.uniform(0.05, 0.8) * ref_seconds, 3)) for _ in range(time_points)]

        # 3. Kill, resume, compare.
        for index, (kind, where) in enumerate(plan):
            out = str(workdir / f"run_{index:02d}")
            shutil.rmtree(out, ignore_errors=True)
            verdict_file = Path(out + ".verdict.json")

            def killed_run(where=where, kind=kind, out=out):
                killer = Killer(where if kind == "event" else None)
                killer.install()
                run_lottery(out, cli.rewind, cli.target_sparsity, resume=False, killer=killer)

            def resumed_run(out=out, verdict_file=verdict_file):
                run_lottery(out, cli.rewind, cli.target_sparsity, resume=True)
                verdict_file.write_text(json.dumps(verdict(out, ref_dir)))

            kill_status, _ = _wait(_child(killed_run), kill_after=where if kind == "time" else None)
            resume_status, _ = _wait(_child(resumed_run))
            row: dict[str, Any] = {
                "kind": kind,
                "point": where,
                "event": names[where - 1] if kind == "event" else None,
                "first_run": kill_status,
                "resume": resume_status,
            }
            if verdict_file.is_file():
                row.update(json.loads(verdict_file.read_text()))
            row["ok"] = bool(resume_status == "finished" and row.get("ticket_equal") and row.get("history_equal"))
            results.append(row)
            print(
                f"{index:2d} {kind:5s} {str(where):>7s} {row['event'] or '':45s} first={kill_status:8s} "
                f"resume={resume_status:8s} ticket_equal={row.get('ticket_equal')} "
                f"history_equal={row.get('history_equal')}",
                flush=True,
            )
    finally:
        if cli.json:
            Path(cli.json).write_text(json.dumps({"events": len(names), "results": results}, indent=1))
        if cli.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    bad = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(bad)}/{len(results)} resumed runs matched the uninterrupted run.")
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
