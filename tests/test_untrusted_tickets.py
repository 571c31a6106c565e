"""A ticket folder is untrusted input: it cannot widen what `from_pretrained` may do, cannot exhaust memory while
decoding, and a crash while saving leaves nothing a later load mistakes for a ticket."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zstandard

from hf_lottery import TicketConfig, TicketMask, prune
from hf_lottery.constants import (
    MASK_FORMAT_KEY,
    MASK_METADATA_KEY,
    TICKET_CARD_NAME,
    TICKET_CONFIG_NAME,
    TICKET_MASK_NAME,
)
from hf_lottery.testing_utils import tiny_model
from hf_lottery.ticket.codec import MAX_MASK_ENTRIES, _rice_encode, load_masks, save_masks
from hf_lottery.ticket.fingerprint import file_sha256
from hf_lottery.utils.io import save_tensors

REPO_ROOT = Path(__file__).resolve().parents[1]
QUERY = "bert.encoder.layer.0.attention.self.query.weight"
MEMORY_CAP_MB = 48  # what loading one bomb may add to the process's peak memory (the true mask: 1 KB)


class RecordingModelClass:
    """Stands in for an `AutoModel*` class: records the arguments `from_pretrained` receives."""

    calls: list[tuple[Any, dict[str, Any]]] = []

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.calls.append((path, kwargs))
        return tiny_model(seed=0)


def ticket_with_model_kwargs(tmp_path: Path, model_kwargs: dict[str, Any]) -> Path:
    model = tiny_model(seed=0)
    mask = prune(model, 0.5)
    config = TicketConfig.from_model(model, mask, lottery_args={"pruning_method": "magnitude"})
    config.base_model_name_or_path = "org/base-with-auto-map"
    out = mask.with_metadata(config.to_dict()).save_pretrained(tmp_path / "ticket")
    data = json.loads((out / TICKET_CONFIG_NAME).read_text())
    data["model_kwargs"] = model_kwargs  # what a hostile ticket would carry
    (out / TICKET_CONFIG_NAME).write_text(json.dumps(data))
    return out


# -- 1. model_kwargs allow-list -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hostile",
    [
        {"trust_remote_code": True},
        {"device_map": "auto"},
        {"cache_dir": "/tmp/elsewhere"},
        {"gguf_file": "../../weights.gguf"},
        {"attn_implementation": "kernels-community/flash-attn"},
        {"num_labels": "2; import os"},
        {"dtype": {"__class__": "x"}},
    ],
    ids=lambda d: next(iter(d)),
)
def test_ticket_cannot_widen_from_pretrained(tmp_path, hostile):
    out = ticket_with_model_kwargs(tmp_path, {"num_labels": 2, **hostile})
    ticket = TicketMask.from_pretrained(out)  # reading the mask is harmless
    RecordingModelClass.calls = []
    key = next(iter(hostile))
    with pytest.raises(ValueError, match=rf"{TICKET_CONFIG_NAME}.*{key}.*pass the argument yourself"):
        ticket.load_model(RecordingModelClass, verify_base=False)
    with pytest.raises(ValueError, match=key):  # another base path does not bypass it
        ticket.load_model(RecordingModelClass, base="my/own-base", verify_base=False)
    assert RecordingModelClass.calls == []  # refused before anything is loaded


def test_caller_consent_and_safe_kwargs_pass(tmp_path):
    out = ticket_with_model_kwargs(tmp_path, {"num_labels": 2, "dtype": "float32", "trust_remote_code": True})
    ticket = TicketMask.from_pretrained(out)
    RecordingModelClass.calls = []
    ticket.load_model(RecordingModelClass, verify_base=False, trust_remote_code=False)
    ((path, kwargs),) = RecordingModelClass.calls
    assert path == "org/base-with-auto-map"
    assert kwargs == {"num_labels": 2, "dtype": "float32", "trust_remote_code": False}


def test_card_renders_only_allow_listed_kwargs(tmp_path):
    model = tiny_model(seed=0)
    mask = prune(model, 0.5)
    config = TicketConfig.from_model(model, mask)
    config.model_kwargs = {"num_labels": 2, "trust_remote_code": True, "device_map": "auto"}
    out = mask.with_metadata(config.to_dict()).save_pretrained(tmp_path / "t")
    card = (out / TICKET_CARD_NAME).read_text()
    assert "num_labels=2" in card
    assert "trust_remote_code" not in card and "device_map" not in card


# -- 2. Bounded decoding --------------------------------------------------------------------------------------
def one_tensor_ticket(tmp_path: Path) -> Path:
    """A valid ticket masking one 32 x 32 weight."""
    model = tiny_model(seed=0)
    mask = {QUERY: torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) > 0.5}
    config = TicketConfig.from_model(model, mask)
    return TicketMask(mask, config.to_dict()).save_pretrained(tmp_path / "ticket", create_card=False)


def forge(folder: Path, data: bytes, **header: Any) -> None:
    """Replace the ticket's mask by `data` under `header`, signed as a hostile author would (digests recomputed)."""
    array = np.frombuffer(data, dtype=np.uint8)
    full = {"name": QUERY, "sha256": hashlib.sha256(data).hexdigest(), **header}
    metadata = {MASK_FORMAT_KEY: "1", MASK_METADATA_KEY: json.dumps([full])}
    save_tensors(folder / TICKET_MASK_NAME, {QUERY: torch.from_numpy(array.copy())}, metadata=metadata)
    config = json.loads((folder / TICKET_CONFIG_NAME).read_text())
    config["mask_sha256"] = file_sha256(folder / TICKET_MASK_NAME)
    (folder / TICKET_CONFIG_NAME).write_text(json.dumps(config))


def zstd_bomb(size: int) -> bytes:
    """A zstd frame of `size` zero bytes that declares its content size (a few KB for hundreds of MB)."""
    sink = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(sink, size=size, closefd=False) as writer:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            writer.write(block)
    return sink.getvalue()


def rice_bomb(n: int) -> tuple[bytes, dict[str, Any]]:
    """A few bytes of rice code for `n` kept entries."""
    k = max(0, n.bit_length() - 1)
    fields = {"minority": False, "count": 0, "k": k, "unary_bits": (n >> k) + 1}
    return _rice_encode(np.array([n], dtype=np.int64), fields).tobytes(), fields


_PEAK_SCRIPT = """
import json, resource, sys
from hf_lottery import TicketMask
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = []
for folder in sys.argv[1:]:
    try:
        TicketMask.from_pretrained(folder)
        outcomes.append("loaded")
    except ValueError as err:
        outcomes.append("ValueError: " + str(err))
    except BaseException as err:
        outcomes.append(type(err).__name__ + ": " + str(err))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcomes": outcomes, "grown_mb": (after - before) / 1024}))
"""

BOMB_BYTES = 192 << 20  # what the bombs below would make the old decoder allocate
BOMBS = ["zstd frame", "rice stream", "bits header"]


def bomb_ticket(tmp_path: Path, bomb: str) -> tuple[Path, str]:
    """A ticket whose mask file is a decompression bomb, and the reason its refusal must give."""
    folder = one_tensor_ticket(tmp_path / bomb.replace(" ", "_"))
    if bomb == "zstd frame":  # the header says 32 x 32; the frame holds 192 MiB
        data = zstd_bomb(BOMB_BYTES)
        assert len(data) < 64 << 10
        forge(folder, data, shape=[32, 32], kept=0, codec="zstd")
        return folder, "zstd frame declares"
    if bomb == "rice stream":  # a few bytes claiming 2e8 entries
        data, fields = rice_bomb(BOMB_BYTES)
        assert len(data) < 16
        forge(folder, data, shape=[BOMB_BYTES], kept=BOMB_BYTES, codec="rice", **fields)
        return folder, "disagrees with the ticket config"
    forge(folder, b"", shape=[2**40, 2**40], kept=0, codec="bits")
    return folder, "disagrees with the ticket config"


@pytest.mark.parametrize("bomb", BOMBS)
def test_bombs_are_refused_before_allocating(tmp_path, bomb):
    folder, reason = bomb_ticket(tmp_path, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{TICKET_MASK_NAME}, tensor '{QUERY}'.*{reason}"):
            TicketMask.from_pretrained(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # numpy and zstd output buffers are traced


def test_bombs_stay_under_a_memory_cap_in_a_fresh_process(tmp_path):
    """The whole process's peak resident memory (C allocations included) while loading every bomb."""
    folders = [bomb_ticket(tmp_path, bomb)[0] for bomb in BOMBS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *map(str, folders)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(o.startswith("ValueError") and TICKET_MASK_NAME in o for o in result["outcomes"]), result
    assert result["grown_mb"] < MEMORY_CAP_MB, result


def test_zstd_frame_without_declared_size_is_read_only_to_the_expected_size(tmp_path):
    sink = io.BytesIO()
    with zstandard.ZstdCompressor(level=3, write_content_size=False).stream_writer(sink, closefd=False) as writer:
        for _ in range(BOMB_BYTES >> 20):
            writer.write(bytes(1 << 20))
    path = tmp_path / "m.safetensors"
    data = sink.getvalue()
    header = {"name": "w", "shape": [32, 32], "kept": 0, "codec": "zstd", "sha256": hashlib.sha256(data).hexdigest()}
    metadata = {MASK_FORMAT_KEY: "1", MASK_METADATA_KEY: json.dumps([header])}
    save_tensors(path, {"w": torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())}, metadata=metadata)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"m\.safetensors, tensor 'w'.*holds more than the 128 bytes"):
            load_masks(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_file_claims_checked_without_a_config(tmp_path):
    path = tmp_path / "m.safetensors"
    data, fields = rice_bomb(MAX_MASK_ENTRIES + 1)
    forged = {"name": "w", "shape": [MAX_MASK_ENTRIES + 1], "kept": MAX_MASK_ENTRIES + 1, "codec": "rice", **fields}
    forged["sha256"] = hashlib.sha256(data).hexdigest()
    metadata = {MASK_FORMAT_KEY: "1", MASK_METADATA_KEY: json.dumps([forged])}
    save_tensors(path, {"w": torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())}, metadata=metadata)
    with pytest.raises(ValueError, match=r"m\.safetensors, tensor 'w'.*more than the 4294967296"):
        load_masks(path)


@pytest.mark.parametrize(
    "gaps",
    [
        [2**62] * 4 + [1020],  # gaps past the shape whose int64 sum wraps around to exactly the shape (IndexError)
        [600, 500],  # every gap plausible, their sum past the shape
    ],
)
def test_rice_gaps_past_the_shape_are_refused(tmp_path, gaps):
    n = 1024
    array = np.array(gaps, dtype=np.int64)
    k = 9
    fields = {"minority": True, "count": len(gaps) - 1, "k": k, "unary_bits": int((array >> k).sum()) + len(gaps)}
    if fields["unary_bits"] > 1 << 20:  # an overflowing gap spelled in few bits: a large k
        k = 61
        fields.update(k=k, unary_bits=int((array >> k).sum()) + len(gaps))
    data = _rice_encode(array, fields).tobytes()
    header = {"name": "w", "shape": [n], "kept": len(gaps) - 1, "codec": "rice", **fields}
    assert all(g >= 0 for g in array.tolist())
    header["sha256"] = hashlib.sha256(data).hexdigest()
    path = tmp_path / "m.safetensors"
    metadata = {MASK_FORMAT_KEY: "1", MASK_METADATA_KEY: json.dumps([header])}
    save_tensors(path, {"w": torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())}, metadata=metadata)
    with pytest.raises(ValueError, match=r"m\.safetensors, tensor 'w'.*gap"):
        load_masks(path)


def test_truncated_file_is_described_without_reading_it_whole(tmp_path):
    path = tmp_path / "m.safetensors"
    save_masks(path, {"w": torch.rand(2048, 2048, generator=torch.Generator().manual_seed(0)) > 0.5}, codec="bits")
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"tensor 'w' ends at byte"):
            load_masks(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(raw) // 4, (peak, len(raw))


# -- 4. Crash debris, partial replacements, user files, tied weights -----------------------------------------
_KILLED_SAVE = """
import os, sys
from pathlib import Path
from hf_lottery.utils.io import staging_folder
context = staging_folder(Path(sys.argv[1]))
staging = context.__enter__()
(staging / "model.safetensors").write_bytes(bytes(4096))
print(staging, flush=True)
os._exit(9)  # killed mid-save: nothing cleans up
"""


def killed_save_debris(target: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], capture_output=True, text=True, env=env)
    debris = Path(done.stdout.strip())
    assert debris.is_dir() and debris.parent == target.parent, done.stderr[-2000:]
    return debris


@pytest.mark.parametrize("then", ["save", "load"])
def test_staging_folders_of_killed_saves_are_swept(tmp_path, then):
    target = tmp_path / "ticket"
    mask = TicketMask({QUERY: torch.ones(32, 32, dtype=torch.bool)})
    mask.save_pretrained(target)
    debris = killed_save_debris(target)
    other = (tmp_path / ".ticket.tmp-elsewhere-1-abc").resolve()  # another host's save, or anything else
    other.mkdir()
    from hf_lottery.utils.io import staging_folder

    with staging_folder(target) as running:  # a save of this process, still running
        if then == "save":
            mask.save_pretrained(target)
        else:
            assert TicketMask.from_pretrained(target) == mask
        assert running.is_dir() and other.is_dir()
    assert not debris.exists()


def test_replaced_card_and_plot_without_their_config_are_detected(tmp_path):
    import logging

    model = tiny_model(seed=0)
    history = [{"round": 0, "sparsity": 0.0, "metrics": {"eval_accuracy": 0.5}}]
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, sparsity in ((a, 0.3), (b, 0.6)):
        mask = prune(model, sparsity)
        config = TicketConfig.from_model(model, mask, history=history, metric="eval_accuracy")
        mask.with_metadata(config.to_dict()).save_pretrained(folder)
    assert json.loads((a / TICKET_CONFIG_NAME).read_text())["files_sha256"].keys() == {
        TICKET_CARD_NAME,
        "sparsity_plot.png",
    }
    os.replace(b / TICKET_CARD_NAME, a / TICKET_CARD_NAME)  # a save of b into a, killed before the mask
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the library logger's own handlers and propagation vary with earlier tests
    folder_logger = logging.getLogger("hf_lottery.ticket.folder")
    folder_logger.addHandler(handler)
    try:
        loaded = TicketMask.from_pretrained(a)
    finally:
        folder_logger.removeHandler(handler)
    assert loaded.sparsity == pytest.approx(0.3, abs=0.01)
    text = " ".join(r.getMessage() for r in records)
    assert f"{TICKET_CARD_NAME} is not the one(s) written with {TICKET_CONFIG_NAME}" in text


def test_save_sparse_model_keeps_files_it_did_not_write(tmp_path):
    from hf_lottery import save_sparse_model

    model = tiny_model(seed=0)
    out = tmp_path / "sparse"
    save_sparse_model(model, prune(model, 0.3), out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists()
    mine = [
        "model.orig.safetensors",
        "model-before-pruning.bin",
        "pytorch_model.my_backup.bin",
        "model.safetensors.bak",
    ]
    for name in mine:
        (out / name).write_bytes(b"user data")
    save_sparse_model(model, prune(model, 0.5), out)
    names = {p.name for p in out.iterdir()}
    assert all((out / name).read_bytes() == b"user data" for name in mine)
    assert "model.safetensors" in names and not any(n.startswith("model-0") for n in names), names


def test_tied_weights_are_masked_together(tmp_path):
    from transformers import AutoModelForMaskedLM

    from hf_lottery import save_sparse_model
    from hf_lottery.testing_utils import tiny_config

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(tiny_config("bert")).eval()
    embedding = "bert.embeddings.word_embeddings.weight"
    assert model.cls.predictions.decoder.weight is dict(model.named_parameters())[embedding]  # tied
    ticket = prune(model, 0.5, prune_modules=[r".*word_embeddings\.weight", r".*encoder.*\.weight"])
    assert embedding in ticket
    save_sparse_model(model, ticket, tmp_path / "sparse")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "sparse").eval()
    sparse = ticket.apply_(model)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, sparse(input_ids=ids).logits)
    assert not reloaded.cls.predictions.decoder.weight[~ticket[embedding]].any()


def test_race_to_create_a_folder_gives_the_library_error(tmp_path, monkeypatch):
    import hf_lottery.utils.io as io_module

    rename = os.rename

    def racing_rename(src, dst):  # another process creates and fills the folder first
        Path(dst).mkdir()
        (Path(dst) / "x").write_text("other")
        rename(src, dst)

    monkeypatch.setattr(io_module.os, "rename", racing_rename)
    mask = TicketMask({QUERY: torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"Another process created .*ticket while this one was saving"):
        mask.save_pretrained(tmp_path / "ticket")
    assert [p.name for p in tmp_path.iterdir()] == ["ticket"]
