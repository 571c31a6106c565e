"""Peak memory of loading a mask file against the mask's true size, per codec, and of refusing bombs.

Each measurement runs in a fresh process (`ru_maxrss` after the imports, then after `load_masks`), so C
allocations (zstd buffers) count too. Masks are one tensor of n entries at sparsity s, encoded with one codec;
bombs are the files `tests/test_untrusted_tickets.py` builds, here without a ticket config (the zstd frame is still
refused; the rice stream's claimed 2e8 entries are then the mask's true size, and load). Memory, not time: the numbers hold on a loaded
machine. Results go to a JSON file, one record per (codec, n, sparsity) key; a rerun skips the keys it holds.

    python bench/decode_memory.py --json bench/decode_memory.json [--entries 1e6 1e7 1e8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parents[1]

_MEASURE = """
import json, resource, sys, tracemalloc
import torch
from hf_lottery.ticket.codec import load_masks
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
try:
    masks = load_masks(sys.argv[1])
    outcome = "loaded %d entries" % sum(m.numel() for m in masks.values())
except ValueError as err:
    outcome = "refused: " + str(err)[:120]
traced = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "peak_growth_bytes": (after - before) * 1024, "traced_peak_bytes": traced}))
"""


def measure(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_mask(path: Path, codec: str, n: int, sparsity: float) -> None:
    import torch

    from hf_lottery.ticket.codec import save_masks

    mask = torch.rand(n, generator=torch.Generator().manual_seed(0)) >= sparsity
    save_masks(path, {"w": mask}, codec=codec)


def write_bomb(path: Path, kind: str) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import hashlib

    import numpy as np
    import torch
    from test_untrusted_tickets import BOMB_BYTES, rice_bomb, zstd_bomb

    from hf_lottery.constants import MASK_FORMAT_KEY, MASK_METADATA_KEY
    from hf_lottery.utils.io import save_tensors

    if kind == "zstd":
        data, header = zstd_bomb(BOMB_BYTES), {"shape": [32, 32], "kept": 0, "codec": "zstd"}
    else:
        data, fields = rice_bomb(BOMB_BYTES)
        header = {"shape": [BOMB_BYTES], "kept": BOMB_BYTES, "codec": "rice", **fields}
    header.update(name="w", sha256=hashlib.sha256(data).hexdigest())
    metadata = {MASK_FORMAT_KEY: "1", MASK_METADATA_KEY: json.dumps([header])}
    save_tensors(path, {"w": torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())}, metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("bench/decode_memory.json"))
    parser.add_argument("--entries", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    args = parser.parse_args()
    results = json.loads(args.json.read_text()) if args.json.exists() else {"records": {}}
    results.update(
        machine=machine(),
        command=" ".join(sys.argv),
        loadavg_at_start=Path("/proc/loadavg").read_text().split()[:3],
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    keys = [f"bomb:{kind}" for kind in ("zstd", "rice")]
    keys += [f"{c}:{int(n)}:{s}" for c in ("bits", "zstd", "rice") for n in args.entries for s in args.sparsities]
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            if key in results["records"]:
                continue
            path = Path(tmp) / "mask.safetensors"
            if key.startswith("bomb:"):
                write_bomb(path, key.split(":")[1])
                n = None
            else:
                codec, n, sparsity = key.split(":")
                n = int(n)
                write_mask(path, codec, n, float(sparsity))
            record = measure(path)
            record.update(file_bytes=path.stat().st_size, loadavg=Path("/proc/loadavg").read_text().split()[:3])
            if n:
                record["traced_bytes_per_entry"] = round(record["traced_peak_bytes"] / n, 3)
            results["records"][key] = record
            args.json.write_text(json.dumps(results, indent=1, sort_keys=True))  # resumable after each key
            print(key, record)


if __name__ == "__main__":
    main()
