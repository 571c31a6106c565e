"""The mask codec: bit-exact round trips, the entropy bound, and damaged files."""

from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_lottery.constants import MASK_FORMAT_KEY, MASK_METADATA_KEY
from hf_lottery.ticket.codec import CODECS, decode_mask, encode_mask, load_masks, save_masks

SPARSITIES = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
SHAPES = [(0,), (1,), (7,), (13,), (1000,), (3, 5), (17, 9), (64, 48), (2, 3, 5)]


def random_mask(shape, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) >= sparsity


def entropy_bytes(mask: torch.Tensor) -> float:
    n = mask.numel()
    p = float(mask.float().mean()) if n else 1.0
    h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return n * h / 8


@pytest.mark.parametrize("codec", [None, *CODECS])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_round_trip_is_bit_exact(codec, sparsity):
    for i, shape in enumerate(SHAPES):
        mask = random_mask(shape, sparsity, seed=i)
        data, header = encode_mask(mask, codec)
        assert data.dtype == np.uint8 and data.ndim == 1
        out = decode_mask(data, header)
        assert out.dtype == torch.bool and out.shape == mask.shape
        assert torch.equal(out, mask), (shape, sparsity, codec)


def test_structured_masks_round_trip_and_stay_small():
    rows = (torch.rand(300, 1, generator=torch.Generator().manual_seed(0)) > 0.5).expand(300, 200).contiguous()
    cases = {
        "rows": rows,
        "first_half": torch.arange(10_001) < 5_000,
        "one_kept": torch.zeros(4096, dtype=torch.bool).index_fill_(0, torch.tensor([4095]), True),
        "one_pruned": torch.ones(4097, dtype=torch.bool).index_fill_(0, torch.tensor([0]), False),
    }
    for name, mask in cases.items():
        data, header = encode_mask(mask)
        assert torch.equal(decode_mask(data, header), mask), name
        assert data.size < mask.numel() / 8 / 10, (name, header["codec"], data.size)


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
def test_size_within_ten_percent_of_entropy(sparsity):
    mask = random_mask((384, 512), sparsity, seed=1)
    data, _ = encode_mask(mask)
    assert data.size <= 1.1 * entropy_bytes(mask) + 64


def test_file_size_bound_and_order(tmp_path):
    masks = {f"layer.{i}.weight": random_mask((256, 96), s, seed=i) for i, s in enumerate([0.99, 0.1, 0.5, 0.9])}
    masks["a.bias_like"] = random_mask((33,), 0.3)
    path = tmp_path / "m.safetensors"
    save_masks(path, masks)
    loaded = load_masks(path)
    assert list(loaded) == list(masks)  # mask order kept, not the file's sorted order
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    bound = sum(1.1 * entropy_bytes(m) for m in masks.values())
    assert path.stat().st_size <= bound + 200 * len(masks) + 200  # headers: a small constant per tensor
    with safe_open(str(path), framework="np") as f:
        assert f.metadata()["format"] == "pt"
        assert all(f.get_tensor(k).dtype == np.uint8 for k in f.keys())


def test_decoding_is_vectorised():
    mask = random_mask((4096, 1024), 0.1)  # 4M weights, about a twentieth of BERT-base
    data, header = encode_mask(mask)
    start = time.perf_counter()
    decode_mask(data, header)
    assert time.perf_counter() - start < 1.0


def test_empty_and_full_tensors_cost_almost_nothing():
    for mask in (torch.zeros(768, 768, dtype=torch.bool), torch.ones(768, 768, dtype=torch.bool)):
        data, header = encode_mask(mask)
        assert data.size <= 32, header
        assert torch.equal(decode_mask(data, header), mask)


# -- Damaged files --------------------------------------------------------------------------------------------
@pytest.fixture
def mask_file(tmp_path):
    masks = {"enc.0.weight": random_mask((64, 64), 0.9), "enc.1.weight": random_mask((64, 64), 0.5, seed=3)}
    path = tmp_path / "ticket_mask.safetensors"
    save_masks(path, masks)
    return path, masks


def _rewrite(path, edit_headers=None, edit_tensors=None, metadata_updates=None):
    with safe_open(str(path), framework="np") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    headers = json.loads(metadata[MASK_METADATA_KEY])
    if edit_headers:
        edit_headers(headers)
    if edit_tensors:
        edit_tensors(tensors)
    metadata[MASK_METADATA_KEY] = json.dumps(headers)
    metadata.update(metadata_updates or {})
    save_file(tensors, str(path), metadata=metadata)


def test_truncated_file_names_file_and_tensor(mask_file):
    path, _ = mask_file
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"ticket_mask\.safetensors.*truncated") as info:
        load_masks(path)
    assert "enc.1.weight" in str(info.value)  # stored last, so the first whose bytes are cut


def test_garbage_file(mask_file):
    path, _ = mask_file
    path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="ticket_mask.safetensors"):
        load_masks(path)


def test_flipped_byte_is_caught_by_digest(mask_file):
    path, _ = mask_file
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"ticket_mask\.safetensors, tensor 'enc\.1\.weight'.*sha256"):
        load_masks(path)


def test_wrong_decoded_length(mask_file):
    path, _ = mask_file

    def grow(headers):
        headers[0]["shape"] = [64, 65]

    _rewrite(path, edit_headers=grow)
    with pytest.raises(ValueError, match=r"tensor 'enc\.0\.weight'"):
        load_masks(path)


def test_wrong_kept_count(mask_file):
    path, _ = mask_file

    def lie(headers):
        headers[1]["kept"] += 1

    _rewrite(path, edit_headers=lie)
    with pytest.raises(ValueError, match=r"tensor 'enc\.1\.weight'.*kept"):
        load_masks(path)


def test_rice_stream_inconsistent_with_header():
    mask = random_mask((50, 40), 0.95)
    data, header = encode_mask(mask, "rice")
    with pytest.raises(ValueError, match="rice fields"):
        decode_mask(data, {**header, "count": header["count"] + 1})
    damaged = data.copy()
    first_one = int(np.flatnonzero(np.unpackbits(damaged) == 1)[0])  # a unary one-bit turned into a terminator
    damaged[first_one // 8] ^= 0x80 >> (first_one % 8)
    resigned = {**header, "sha256": hashlib.sha256(damaged.tobytes()).hexdigest()}
    with pytest.raises(ValueError, match="gaps"):
        decode_mask(damaged, resigned)


def test_unknown_codec_and_format_version(mask_file):
    path, _ = mask_file

    def rename(headers):
        headers[0]["codec"] = "lz-future"

    _rewrite(path, edit_headers=rename)
    with pytest.raises(ValueError, match=r"enc\.0\.weight.*unknown codec 'lz-future'"):
        load_masks(path)
    _rewrite(path, metadata_updates={MASK_FORMAT_KEY: "7"})
    with pytest.raises(ValueError, match="mask format '7'.*Upgrade"):
        load_masks(path)


def test_missing_and_unlisted_tensors(mask_file):
    path, _ = mask_file
    _rewrite(path, edit_tensors=lambda t: t.pop("enc.1.weight"))
    with pytest.raises(ValueError, match=r"'enc\.1\.weight' is listed.*missing"):
        load_masks(path)


def test_not_a_mask_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": np.zeros(3, dtype=np.uint8)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an hf_lottery mask file"):
        load_masks(path)
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path / "absent.safetensors")
