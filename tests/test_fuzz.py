"""Random mutations of valid ticket folders and run states (bit flips, truncations, inserted bytes, header edits):
each load ends in a correct result or the documented error naming the file, never another exception type, and never
above a memory cap. `HF_LOTTERY_FUZZ_SEED` and `HF_LOTTERY_FUZZ_CASES` vary the cases (CI uses the defaults)."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open

from hf_lottery import TicketConfig, TicketMask, prune
from hf_lottery.constants import MASK_METADATA_KEY, TICKET_CONFIG_NAME, TICKET_MASK_NAME
from hf_lottery.testing_utils import tiny_model
from hf_lottery.training.checks import TICKET_SETTINGS, check_resumed_settings, ticket_settings
from hf_lottery.training.run_state import RunState, snapshot_weights

SEED = int(os.environ.get("HF_LOTTERY_FUZZ_SEED", "16"))
CASES = int(os.environ.get("HF_LOTTERY_FUZZ_CASES", "160"))  # per artifact: 320 in all
MEMORY_CAP = 16 << 20  # traced bytes one load may peak at (the masks themselves: about 60 KB)
DOCUMENTED = (ValueError, FileNotFoundError)
NO_SETTINGS = SimpleNamespace(**dict.fromkeys(TICKET_SETTINGS))
MODEL = tiny_model(seed=0)
ODD_VALUES: list[Any] = [
    None,
    -1,
    0,
    2**31,
    10**30,
    1.5,
    "x",
    "",
    True,
    [],
    [1, 2],
    {},
    {"a": [1]},
    [[[[[]]]]],
    "nan",
    [2**40, 2**40],
    ["0"],
]


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:8]):
            paths += _json_paths(item, (*prefix, index))
    return paths


def _edit_json(value: Any, rng: random.Random) -> Any:
    """`value` with one random node replaced by an odd value, deleted, or nested very deeply."""
    path = rng.choice(_json_paths(value)[1:] or [()])
    if not path:
        return rng.choice(ODD_VALUES)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    choice = rng.random()
    if choice < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif choice < 0.2:
        parent[path[-1]] = "x" * rng.choice([1, 1000, 200_000])
    else:
        parent[path[-1]] = rng.choice(ODD_VALUES)
    return value


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "flip", "truncate", "insert", "zero"])
    if not data:
        return b"\x00"
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "insert":
        at = rng.randrange(len(data))
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]
    at = rng.randrange(len(data))
    return data[:at] + bytes(min(64, len(data) - at)) + data[at + 64 :]


def _mutate_json_file(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.3:
        path.write_bytes(_mutate_bytes(path.read_bytes(), rng))
        return
    value = _edit_json(json.loads(path.read_text()), rng)
    if rng.random() < 0.05:
        path.write_text("[" * 100_000 + "]" * 100_000)  # deep nesting
    else:
        path.write_text(json.dumps(value))


def _mutate_safetensors_header(path: Path, rng: random.Random) -> None:
    """Edit the JSON header of a safetensors file (offsets, dtypes, shapes, the mask headers in its metadata)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    metadata = header.get("__metadata__", {})
    if MASK_METADATA_KEY in metadata and rng.random() < 0.6:
        masks = _edit_json(json.loads(metadata[MASK_METADATA_KEY]), rng)
        metadata[MASK_METADATA_KEY] = json.dumps(masks)
    else:
        header = _edit_json(header, rng)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def _mutate_file(path: Path, rng: random.Random) -> None:
    if path.suffix == ".json":
        _mutate_json_file(path, rng)
    elif path.suffix == ".safetensors" and rng.random() < 0.5:
        _mutate_safetensors_header(path, rng)
    else:
        path.write_bytes(_mutate_bytes(path.read_bytes(), rng))


def _run_case(load: Callable[[], Any], check: Callable[[Any], None], name: str) -> str:
    tracemalloc.start()
    try:
        result = load()
    except DOCUMENTED as err:
        outcome = "error"
        assert name in str(err), f"{type(err).__name__} does not name the file: {err}"
    except Exception as err:  # pragma: no cover - what the fuzz test exists to catch
        raise AssertionError(f"undocumented {type(err).__name__}: {err}") from err
    else:
        outcome = "loaded"
        check(result)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_CAP, f"peak {peak} bytes"
    return outcome


@pytest.fixture(scope="module")
def ticket_folder(tmp_path_factory) -> tuple[Path, TicketMask]:
    model = tiny_model(seed=0)
    masks = prune(model, 0.6).to_dict()
    names = list(masks)
    masks[names[0]] = torch.ones_like(masks[names[0]])
    masks[names[0]][:4] = False  # whole rows pruned: zstd
    masks[names[1]] = torch.rand(masks[names[1]].shape, generator=torch.Generator().manual_seed(1)) > 0.97  # rice
    config = TicketConfig.from_model(model, masks, task="sst2", lottery_args={"pruning_method": "magnitude"})
    folder = tmp_path_factory.mktemp("fuzz") / "ticket"
    TicketMask(masks, config.to_dict()).save_pretrained(folder, create_card=False)
    with safe_open(str(folder / TICKET_MASK_NAME), framework="pt") as f:
        codecs = {h["codec"] for h in json.loads(f.metadata()[MASK_METADATA_KEY])}
    assert codecs == {"bits", "zstd", "rice"}  # every decoder is fuzzed
    return folder, TicketMask.from_pretrained(folder)


@pytest.fixture(scope="module")
def run_state_folder(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    model = tiny_model(seed=0)
    out = tmp_path_factory.mktemp("fuzz-run")
    state = RunState(out)
    mask = prune(model, 0.3)
    state.save_theta0(snapshot_weights(model))
    state.save_mask(0, TicketMask.ones_like(mask))
    state.save_mask(1, mask)
    history = [{"round": 0, "sparsity": 0.0, "metrics": {"eval_loss": 0.5}}]
    state.write(1, "prepared", [0.0, 0.3], history)
    theta0 = state.load_theta0()
    settings = ticket_settings(NO_SETTINGS, theta0)
    return out, {"state": state.read(), "mask": state.load_mask(1), "theta0": theta0, "settings": settings}


def test_fuzz_ticket_folders(ticket_folder, tmp_path):
    folder, original = ticket_folder
    rng = random.Random(SEED)
    outcomes = {"error": 0, "loaded": 0}
    for case in range(CASES):
        work = tmp_path / f"case{case}"
        shutil.copytree(folder, work)
        name = rng.choice([TICKET_CONFIG_NAME, TICKET_MASK_NAME, TICKET_MASK_NAME])
        _mutate_file(work / name, rng)

        def check(loaded: TicketMask) -> None:  # a load that succeeds gives the saved masks exactly
            assert list(loaded) == list(original) and loaded == original

        outcomes[_run_case(lambda work=work: TicketMask.from_pretrained(work), check, str(work))] += 1
        shutil.rmtree(work)
    assert outcomes["error"] > CASES // 2, outcomes  # the mutations do reach the checks


def test_fuzz_run_states(run_state_folder, tmp_path):
    folder, original = run_state_folder
    rng = random.Random(SEED + 1)
    outcomes = {"error": 0, "loaded": 0}
    for case in range(CASES):
        work = tmp_path / f"case{case}"
        shutil.copytree(folder, work)
        state_dir = work / "lottery_state"
        name = rng.choice(["state.json", "state.json", "mask_round_1.safetensors", "theta0.safetensors"])
        _mutate_file(state_dir / name, rng)

        def load(work: Path = work) -> dict[str, Any]:  # what a resume reads, and its check of θ0
            state = RunState(work)
            read = state.read()
            theta0 = state.load_theta0()
            check_resumed_settings(original["settings"], ticket_settings(NO_SETTINGS, theta0), work)
            return {"state": read, "mask": state.load_mask(read["round"]), "theta0": theta0}

        def check(loaded: dict[str, Any]) -> None:
            state = loaded["state"]
            assert isinstance(state["round"], int) and state["phase"] in ("prepared", "trained")
            assert all(isinstance(s, float | int) and 0 <= s < 1 for s in state["schedule"])
            assert loaded["theta0"].keys() == original["theta0"].keys()  # else the fingerprint check refused it
            mask = loaded["mask"]
            if {k: v.shape for k, v in mask.items()} != {k: v.shape for k, v in original["mask"].items()}:
                with pytest.raises(ValueError, match="another model|same architecture|another size"):
                    mask.validate(MODEL)  # a renamed tensor is refused when the mask is set on the model

        outcomes[_run_case(load, check, str(work))] += 1
        shutil.rmtree(work)
    assert outcomes["error"] > CASES // 4, outcomes


def test_fuzz_is_not_vacuous(ticket_folder, tmp_path):
    """The unmutated folder loads, so the errors above come from the mutations."""
    folder, original = ticket_folder
    assert TicketMask.from_pretrained(folder) == original
    assert torch.equal(next(iter(original.values())), next(iter(TicketMask.from_pretrained(folder).values())))
