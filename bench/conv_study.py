"""Conv nets from scratch on real images (scikit-learn's digits, shipped offline): dense vs channel pruning with
polarization vs channel pruning with plain L1 vs stripe-wise pruning (Filter Skeleton) vs an unstructured IMP ticket,
compared at equal FLOPs, with measured CPU latency; plus a micro-benchmark of the two stripe-wise inference forms.

Every method is a `LotteryTrainer` run on the same small HF ResNet (`ResNetForImageClassification`, basic blocks),
trained from scratch, `rewind="lr"` (learning-rate rewinding, Renda et al. 2020) so that each round retrains its
survivors. Each run records every round's test accuracy and FLOP-ideal cost (`conv_macs` of the masked model); the
table interpolates each method's accuracy at the FLOP budgets of `--flop-budgets` (fraction of the dense model's
multiply-accumulates) and reports the mean ± std over seeds. The dense baseline is round 0 of the unstructured run.
Latency is measured on the final compact model of each run (channel: shrunk convs; stripe: `StripeConv2d`, in its
three inference forms; unstructured: the masked dense model, which runs at dense speed).

Parts (`--part`): `train` runs the (method, seed) trainings, each written to `--cache-dir` as soon as it finishes
(its record and its final compact model, `save_pretrained`) and skipped on rerun, so two 1-thread processes can
split the methods; `latency` then times, alone, every saved model (loaded back with plain `from_pretrained`)
alternated with its seed's dense model, and the stripe inference forms; `report` gathers everything into `--output-json` and
`--output-md`. `all` (the default) runs the three in turn.

    python bench/conv_study.py                                        # full study (needs a quiet machine)
    OMP_NUM_THREADS=1 python bench/conv_study.py --part train --methods unstructured stripe &   # one per core
    OMP_NUM_THREADS=1 python bench/conv_study.py --part train --methods channel+polarization channel+l1; wait
    python bench/conv_study.py --part latency && python bench/conv_study.py --part report   # ... then timed alone
    python bench/conv_study.py --smoke --cache-dir /tmp/conv_smoke --output-json /tmp/s.json --output-md /tmp/s.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from sklearn.datasets import load_digits
from torch import nn
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification

from hf_lottery import LotteryArguments, LotteryTrainer
from hf_lottery.structured import StripeConv2d, conv_macs, stripe_conv_im2col

METHODS = {
    # name: LotteryArguments overrides
    "unstructured": {"granularity": "weight"},
    "channel+polarization": {"granularity": "channel", "channel_regularizer": "polarization"},
    "channel+l1": {"granularity": "channel", "channel_regularizer": "l1"},
    "stripe": {"granularity": "stripe"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=32, help="digits (8x8) are upsampled to this size")
    p.add_argument("--hidden-sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 1, 1])
    p.add_argument("--epochs", type=float, default=15.0, help="epochs per round")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--target-sparsity", type=float, default=0.9, help="last round (channels, stripes or weights)")
    p.add_argument("--pruning-rate", type=float, default=0.2)
    p.add_argument("--channel-penalty", type=float, default=1e-4)
    p.add_argument("--polarization-t", type=float, default=1.2)
    p.add_argument("--stripe-penalty", type=float, default=5e-5)
    p.add_argument(
        "--flop-budgets", type=float, nargs="+", default=[0.6, 0.4, 0.3, 0.2], help="fractions of dense MACs"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (training and latency)")
    p.add_argument("--latency-batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=20, help="timed samples per model (median kept)")
    p.add_argument("--smoke", action="store_true", help="tiny budget: 1 seed, 1 epoch, small widths (checks only)")
    p.add_argument("--part", choices=["train", "latency", "report", "all"], default="all")
    p.add_argument("--cache-dir", default="bench/_cache/conv_study", help="per-run records and final models")
    p.add_argument("--output-json", default="bench/conv_study_results.json")
    p.add_argument("--output-md", default="bench/RESULTS_conv.md")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.hidden_sizes, args.repeats = [0], 1.0, [8, 16, 32], 3
        args.target_sparsity, args.pruning_rate, args.image_size = 0.6, 0.3, 16
    return args


def environment(args: argparse.Namespace) -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "command": " ".join([sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def digits(image_size: int, seed: int = 0):
    """Train / test splits (80 / 20, stratified by a fixed permutation) of the 1,797 digits, scaled to [0, 1]."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    cut = int(0.8 * len(order))
    return _Images(images[order[:cut]], labels[order[:cut]]), _Images(images[order[cut:]], labels[order[cut:]])


class _Images(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def resnet(args: argparse.Namespace, seed: int) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=1,
        embedding_size=args.hidden_sizes[0],
        hidden_sizes=args.hidden_sizes,
        depths=args.depths,
        layer_type="basic",
        num_labels=10,
        downsample_in_first_stage=False,
    )
    return ResNetForImageClassification(config)


def accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def run_one(method: str, seed: int, args: argparse.Namespace, train, test, model_dir: Path) -> dict:
    overrides = dict(METHODS[method])
    with tempfile.TemporaryDirectory() as out:
        lottery = LotteryArguments(
            output_dir=out,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=256,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            weight_decay=5e-4,
            seed=seed,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            target_sparsity=args.target_sparsity,
            pruning_rate=args.pruning_rate,
            rewind="lr",
            channel_penalty=args.channel_penalty,
            polarization_t=args.polarization_t,
            stripe_penalty=args.stripe_penalty,
            **overrides,
        )
        model = resnet(args, seed)
        sample = train.pixels[:2]  # CPU inputs for the FLOP count (the model is on CPU until train() starts)
        dense_macs = conv_macs(model.eval(), sample)["total"]
        rounds: list[dict] = []

        class _Cost(transformers.TrainerCallback):
            def on_train_end(self, a, state, control, model=None, **kwargs):
                mask = trainer.current_mask
                was_training = model.training
                x = sample.to(next(model.parameters()).device)
                rounds.append({"macs": conv_macs(model.eval(), x, mask)["total"] / dense_macs})
                model.train(was_training)

        trainer = LotteryTrainer(
            model=model, args=lottery, train_dataset=train, eval_dataset=test, compute_metrics=accuracy
        )
        trainer.add_callback(_Cost())
        started = time.time()
        trainer.train()
        seconds = time.time() - started
        for record, cost in zip(trainer.lottery_history, rounds):
            cost.update(
                round=record["round"], sparsity=record["sparsity"], accuracy=record["metrics"]["eval_accuracy"]
            )
        final = trainer._rounds.final_model(trainer.model, trainer.current_mask)
        final = (final if final is not None else trainer.model).cpu().eval()
        final.save_pretrained(model_dir)
    return {
        "method": method,
        "seed": seed,
        "rounds": rounds,
        "final_macs": rounds[-1]["macs"],
        "train_seconds": round(seconds, 1),
        "train_environment": environment(args),
    }


def run_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    return Path(args.cache_dir) / f"{method}-seed{seed}"


def train_part(args: argparse.Namespace) -> None:
    train, test = digits(args.image_size)
    for seed in args.seeds:
        for method in args.methods:
            folder = run_dir(args, method, seed)
            if (folder / "record.json").is_file():
                continue
            print(f"[conv_study] train {method} seed {seed}", flush=True)
            record = run_one(method, seed, args, train, test, folder / "model")
            _write_json(folder / "record.json", record)


def latency_part(args: argparse.Namespace) -> None:
    """Time every saved final model against its seed's dense model (alternated), alone on the machine."""
    shape = digits(args.image_size)[0].pixels.shape[1:]
    for seed in args.seeds:
        dense = resnet(args, seed).eval()
        for method in args.methods:
            folder = run_dir(args, method, seed)
            if not (folder / "record.json").is_file() or (folder / "latency.json").is_file():
                continue
            print(f"[conv_study] time {method} seed {seed}", flush=True)
            model = AutoModelForImageClassification.from_pretrained(folder / "model").eval()
            figures = time_against_dense(model, dense, args, shape)
            _write_json(folder / "latency.json", {"environment": environment(args), "figures": figures})
    forms_file = Path(args.cache_dir) / "stripe_forms.json"
    if not forms_file.is_file():
        _write_json(forms_file, {"environment": environment(args), "rows": stripe_forms(args)})


def report_part(args: argparse.Namespace) -> None:
    cache = Path(args.cache_dir)
    store: dict = {"environment": environment(args), "settings": _settings(args), "results": []}
    for seed in args.seeds:
        for method in args.methods:
            folder = run_dir(args, method, seed)
            if not (folder / "record.json").is_file():
                continue
            record = json.loads((folder / "record.json").read_text())
            timed = folder / "latency.json"
            if timed.is_file():
                latency = json.loads(timed.read_text())
                record["latency_ms"] = latency["figures"]
                store["latency_environment"] = latency["environment"]
            store["results"].append(record)
    if (cache / "stripe_forms.json").is_file():
        store["stripe_forms"] = json.loads((cache / "stripe_forms.json").read_text())["rows"]
    _write_json(Path(args.output_json), store)
    write_markdown(args.output_md, store, args)
    print(Path(args.output_md).read_text())


def _settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("output_json", "output_md", "part", "cache_dir")}


@torch.no_grad()
def _paired_ms(fns: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds of each function on `x`, the functions alternated within every repeat (so a slow moment
    of the machine costs all of them alike)."""
    for fn in fns.values():
        for _ in range(2):
            fn(x)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            samples[name].append(1000 * (time.perf_counter() - start))
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def time_against_dense(model: nn.Module, dense: nn.Module, args: argparse.Namespace, shape) -> dict:
    """`{batch: {"dense": ms, "model": ms[, "im2col": ms, "dense kernel": ms]}}`, alternated; stripe models also in
    their other two inference forms."""
    stripes = [m for m in model.modules() if isinstance(m, StripeConv2d)]

    def run(form: str):
        def call(x):
            for m in stripes:
                m.form = form
            return model(pixel_values=x)

        return call

    fns = {"dense": lambda x: dense(pixel_values=x), "model": run("per_position")}
    if stripes:
        fns["im2col"], fns["dense kernel"] = run("im2col"), run("dense")
    figures = {str(b): _paired_ms(fns, torch.randn(b, *shape), args.repeats) for b in args.latency_batches}
    for m in stripes:
        m.form = "per_position"
    return figures


def stripe_forms(args: argparse.Namespace) -> list[dict]:
    """One 3x3 conv at ResNet-18 stage-1 and stage-3 sizes, stripe-pruned by magnitude at several levels: dense
    conv2d vs the masked conv2d vs the per-position 1x1 form (`StripeConv2d`) vs the im2col with kept columns."""
    rows = []
    sizes = [(64, 56)] if not args.smoke else [(16, 14)]
    sizes += [(256, 14)] if not args.smoke else []
    for channels, size in sizes:
        torch.manual_seed(0)
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        x = torch.randn(1 if not args.smoke else 2, channels, size, size)
        for fraction in (0.5, 0.7, 0.9):
            scores = conv.weight.detach().pow(2).mean(dim=1)
            kept = scores > scores.flatten().kthvalue(max(1, int(fraction * scores.numel()))).values
            stripe = StripeConv2d.from_conv(conv, kept)
            masked = conv.weight * kept[:, None]
            rows.append(
                {
                    "channels": channels,
                    "size": size,
                    "stripes_removed": fraction,
                    "ideal_speedup": round(kept.numel() / int(kept.sum()), 2),
                    **_paired_ms(
                        {
                            "dense_ms": conv,
                            "masked_ms": lambda t, w=masked: nn.functional.conv2d(t, w, padding=1),
                            "per_position_1x1_ms": stripe,
                            "im2col_kept_columns_ms": lambda t, c=conv, k=kept: stripe_conv_im2col(t, c, k),
                        },
                        x,
                        args.repeats,
                    ),
                }
            )
    return rows


def summarize(results: list[dict], budgets: list[float]) -> list[dict]:
    """Each method's accuracy interpolated at each FLOP budget (mean ± std over seeds), plus its last round."""
    table = []
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    # Round 0 of the unstructured run is the plain dense model (the other runs' round 0 trains with a penalty).
    dense = [r["rounds"][0]["accuracy"] for r in by_method.get("unstructured", [])]
    if dense:
        table.append({"method": "dense", "budget": 1.0, "accuracy": _mean_std(dense), "seeds": len(dense)})
    for method, runs in by_method.items():
        for budget in budgets:
            values = []
            for r in runs:
                macs = [x["macs"] for x in r["rounds"]]
                accs = [x["accuracy"] for x in r["rounds"]]
                if min(macs) <= budget:  # np.interp needs increasing x
                    values.append(float(np.interp(budget, macs[::-1], accs[::-1])))
            table.append(
                {
                    "method": method,
                    "budget": budget,
                    "accuracy": _mean_std(values) if values else "not reached",
                    "seeds": len(values),
                }
            )
    return table


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def write_markdown(path: str, store: dict, args: argparse.Namespace) -> None:
    env = store["environment"]
    trained = [r["train_environment"] for r in store["results"] if "train_environment" in r]
    timed = store.get("latency_environment")
    lines = [
        "# Conv nets from scratch on scikit-learn's digits",
        "",
        f"Report: `{env['command']}`, {env['time']}.  ",
        f"Machine: {env['machine']}, {env['cpus']} CPUs, torch {env['torch']}, transformers {env['transformers']}.  ",
    ]
    if trained:
        loads = sorted(float(t["loadavg"][0]) for t in trained if t.get("loadavg"))
        lines.append(
            f"Training: {len(trained)} runs, {trained[0]['threads']} thread each, load average (1 min) at their end "
            f"{loads[0]:.2f}–{loads[-1]:.2f}; e.g. `{trained[0]['command']}`.  "
        )
    if timed:
        lines.append(
            f"Latency: timed alone, `{timed['command']}`, {timed['threads']} thread(s), load average {timed['loadavg']}."
        )
    lines += [
        "",
        "## Accuracy at equal FLOPs (test accuracy %, interpolated between rounds; mean ± std over seeds)",
        "",
        "| method | MACs (fraction of dense) | accuracy | seeds |",
        "|---|---|---|---|",
    ]
    for row in summarize(store["results"], args.flop_budgets):
        lines.append(f"| {row['method']} | {row['budget']:.2f} | {row['accuracy']} | {row['seeds']} |")
    lines += [
        "",
        "## Final round: FLOP-ideal cost and measured CPU latency",
        "",
        "Median ms of the final compact model, alternated with the dense model of the same seed in one process "
        "(× = dense / this; stripe models in all three `StripeConv2d` forms: per-position 1x1 convs, im2col over "
        "the kernel positions in use, and the kept stripes scattered back into one dense kernel).",
        "",
    ]
    batches = [str(b) for b in args.latency_batches]
    lines.append(
        "| method | seed | test accuracy | MACs | "
        + " | ".join(f"dense b{b} | this b{b} | im2col b{b} | dense-kernel b{b}" for b in batches)
        + " |"
    )
    lines.append("|---" * (4 + 4 * len(batches)) + "|")

    def ratio(figures: dict, name: str) -> str:
        if name not in figures:
            return "–"
        return f"{figures[name]} ({figures['dense'] / figures[name]:.2f}×)"

    for r in store["results"]:
        latency = r.get("latency_ms", {})
        cells = []
        for b in batches:
            f = latency.get(b, {})
            cells += [str(f.get("dense", "–"))] + [
                ratio(f, name) if f else "–" for name in ("model", "im2col", "dense kernel")
            ]
        lines.append(
            f"| {r['method']} | {r['seed']} | {100 * r['rounds'][-1]['accuracy']:.2f} | {r['final_macs']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "## Stripe-wise inference forms (one 3x3 conv, ms, median)", ""]
    lines.append(
        "| channels | size | stripes removed | ideal speed-up | dense | masked | per-position 1x1 | im2col kept columns |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in store.get("stripe_forms", []):
        lines.append(
            f"| {row['channels']} | {row['size']} | {row['stripes_removed']} | {row['ideal_speedup']} | "
            f"{row['dense_ms']} | {row['masked_ms']} | {row['per_position_1x1_ms']} | {row['im2col_kept_columns_ms']} |"
        )
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part in ("train", "all"):
        train_part(args)
    if args.part in ("latency", "all"):
        latency_part(args)
    if args.part in ("report", "all"):
        report_part(args)


def _write_json(path: Path, store: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1), encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
