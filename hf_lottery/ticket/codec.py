"""The mask codec: boolean masks stored near their entropy in a pickle-free safetensors file.

File layout (`ticket_mask.safetensors`, mask format 1)
------------------------------------------------------
One 1-D `uint8` tensor per mask, named after the masked parameter, holding that mask's encoded bytes, and the
safetensors metadata

- `"format": "pt"`,
- `"hf_lottery_mask_format": "1"`,
- `"hf_lottery_masks"`: a JSON list, in mask order, of one header per tensor:
  `{"name", "shape", "kept", "codec", "sha256", ...codec fields}` where `kept` counts the True (kept) entries
  and `sha256` is the hex digest of the stored bytes.

A mask is flattened in C order into `n` booleans. Each tensor gets whichever codec is smallest:

- `"bits"`: `numpy.packbits` of the flat mask (most significant bit first, last byte zero-padded),
  `ceil(n / 8)` bytes.
- `"zstd"`: the same packed bits as one zstandard frame. Wins on structured masks (whole rows pruned, tensors
  nearly empty or nearly full).
- `"rice"`: gap coding of the minority value. Field `minority` is the less frequent value, `count` the number
  of its positions `p_0 < p_1 < ... < p_(count-1)`; with the sentinel `p_count = n`, the `count + 1` gaps
  `g_0 = p_0`, `g_i = p_i - p_(i-1) - 1` are Rice-coded with parameter `k` in two streams written one after the
  other: the quotients `g >> k` in unary (`q` one-bits then a zero-bit, `unary_bits` bits in all), packed; then
  the remainders `g & (2**k - 1)` as `k`-bit fields (most significant bit first), packed. The sentinel makes
  the decoded length exact. For a mask drawn independently at density `d` this costs within 4.3% of the
  binary entropy `n * H(d)` bits at every `d`, and it decodes with a handful of vectorised numpy passes.

Every decode checks the digest, the codec fields and the decoded length, and raises `ValueError` naming the
file and the tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard
from safetensors import safe_open

from ..constants import MASK_FORMAT_KEY, MASK_FORMAT_VERSION, MASK_METADATA_KEY
from ..utils.io import save_tensors

CODECS = ("bits", "zstd", "rice")
ZSTD_LEVEL = 3  # higher levels gain little on masks (rice covers the sparse end) and encode 10-100x slower


class _Corrupt(ValueError):
    """A decoding problem of one tensor; re-raised with the file name by the caller."""


# -- One tensor -----------------------------------------------------------------------------------------------
def _flat_bool(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().to("cpu").numpy()
    return np.ascontiguousarray(np.asarray(mask, dtype=bool).reshape(-1))


def _rice_parameter(gaps: np.ndarray) -> tuple[int, int]:
    """The Rice parameter `k` with the fewest bits for `gaps`, and that bit count."""
    count = gaps.size
    if count == 0:
        return 0, 0
    # The optimum is near log2(mean gap * ln 2); the cost is convex in k, so a few neighbours suffice.
    guess = max(0, int(round(math.log2(max(float(gaps.mean()), 1e-9) * math.log(2) + 1e-12))))
    best: tuple[int, int] | None = None
    for k in range(max(0, guess - 2), guess + 3):
        bits = int((gaps >> k).sum()) + count * (1 + k)
        if best is None or bits < best[1]:
            best = (k, bits)
    assert best is not None
    return best


def _rice_plan(flat: np.ndarray, kept: int) -> tuple[int, dict[str, Any], np.ndarray]:
    """Size in bytes, fields and gaps of the rice encoding of `flat` (computed without building the streams)."""
    n = flat.size
    minority = kept < n - kept
    positions = np.flatnonzero(flat == minority)
    count = positions.size
    # A last gap up to the sentinel position n makes the decoded length exact (checked when decoding).
    gaps = np.diff(positions, prepend=-1, append=n) - 1
    k, _ = _rice_parameter(gaps)
    unary_bits = int((gaps >> k).sum()) + count + 1
    fields = {"minority": bool(minority), "count": int(count), "k": int(k), "unary_bits": unary_bits}
    return (unary_bits + 7) // 8 + ((count + 1) * k + 7) // 8, fields, gaps


def _rice_encode(gaps: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    k = fields["k"]
    quotients = gaps >> k
    unary = np.ones(fields["unary_bits"], dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0
    streams = [np.packbits(unary)]
    if k:
        remainders = gaps & ((1 << k) - 1)
        bits = np.empty((gaps.size, k), dtype=np.uint8)
        for j in range(k):
            bits[:, j] = (remainders >> (k - 1 - j)) & 1
        streams.append(np.packbits(bits.reshape(-1)))
    return np.concatenate(streams)


def _rice_decode(data: np.ndarray, n: int, fields: Mapping[str, Any]) -> np.ndarray:
    minority, count, k, unary_bits = (fields.get(key) for key in ("minority", "count", "k", "unary_bits"))
    if not isinstance(minority, bool) or not all(isinstance(v, int) and v >= 0 for v in (count, k, unary_bits)):
        raise _Corrupt("invalid rice fields (minority, count, k, unary_bits)")
    if k > 62 or count > n:
        raise _Corrupt(f"invalid rice fields: k={k}, count={count} for {n} entries")
    unary_bytes = (unary_bits + 7) // 8
    expected = unary_bytes + ((count + 1) * k + 7) // 8
    if data.size != expected:
        raise _Corrupt(f"{data.size} bytes stored where the rice fields announce {expected}")
    unary = np.unpackbits(data[:unary_bytes], count=unary_bits)
    ends = np.flatnonzero(unary == 0)
    if ends.size != count + 1:
        raise _Corrupt(f"the unary stream holds {ends.size - 1} gaps, the header {count}")
    gaps = np.diff(ends, prepend=-1) - 1
    if k:
        bits = np.unpackbits(data[unary_bytes:], count=(count + 1) * k).reshape(count + 1, k)
        gaps <<= k
        for j in range(k):
            gaps |= bits[:, j].astype(np.int64) << (k - 1 - j)
    gaps += 1
    positions = np.cumsum(gaps, out=gaps) - 1
    if positions[-1] != n:
        raise _Corrupt(f"the gaps decode to {int(positions[-1])} entries, the shape has {n}")
    flat = np.full(n, not minority, dtype=bool)
    flat[positions[:-1]] = minority
    return flat


def encode_mask(mask: torch.Tensor | np.ndarray, codec: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Encode one boolean mask.

    Args:
        mask (`torch.Tensor` or `np.ndarray`): the mask (True = kept), any shape.
        codec (`str`, *optional*): force `"bits"`, `"zstd"` or `"rice"`; by default the smallest is used.

    Returns:
        `tuple[np.ndarray, dict]`: the encoded bytes (`uint8`, 1-D) and the header describing them
        (`shape`, `kept`, `codec`, `sha256` and the codec's fields; `name` is added by [`save_masks`]).
    """
    if codec is not None and codec not in CODECS:
        raise ValueError(f"Unknown mask codec {codec!r}; choose one of {', '.join(CODECS)}.")
    shape = [int(s) for s in mask.shape]
    flat = _flat_bool(mask)
    kept = int(np.count_nonzero(flat))
    # Candidates from the fastest to decode to the slowest; ties keep the faster one.
    packed = np.packbits(flat)
    best: tuple[np.ndarray, dict[str, Any]] | None = None
    if codec in (None, "bits"):
        best = (packed, {"codec": "bits"})
    if codec in (None, "zstd"):
        frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(packed.tobytes())
        if best is None or len(frame) < best[0].size:
            best = (np.frombuffer(frame, dtype=np.uint8), {"codec": "zstd"})
    # Above a 30% minority the packed bits are already within 2% of the entropy: skip the gap scan.
    if codec == "rice" or (codec is None and min(kept, flat.size - kept) <= 0.3 * flat.size):
        size, fields, gaps = _rice_plan(flat, kept)
        if best is None or size < best[0].size:
            best = (_rice_encode(gaps, fields), {"codec": "rice", **fields})
    assert best is not None
    data, fields = best
    header = {"shape": shape, "kept": kept, **fields, "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    return data, header


def decode_mask(data: np.ndarray, header: Mapping[str, Any]) -> torch.Tensor:
    """Decode bytes written by [`encode_mask`] back into a `torch.bool` tensor.

    Raises:
        `ValueError`: when the bytes or the header are damaged (digest, codec fields or decoded length).
    """
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _Corrupt(f"invalid shape {shape!r}")
    n = math.prod(shape)
    kept = header.get("kept")
    if not isinstance(kept, int) or not 0 <= kept <= n:
        raise _Corrupt(f"invalid kept count {kept!r} for {n} entries")
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if hashlib.sha256(data.tobytes()).hexdigest() != header.get("sha256"):
        raise _Corrupt("the stored bytes do not match their sha256 digest (damaged or edited file)")
    codec = header.get("codec")
    packed_bytes = (n + 7) // 8
    if codec == "rice":
        flat = _rice_decode(data, n, header)
    elif codec in ("bits", "zstd"):
        if codec == "zstd":
            try:
                raw = zstandard.ZstdDecompressor().decompress(data.tobytes(), max_output_size=packed_bytes)
            except zstandard.ZstdError as err:
                raise _Corrupt(f"zstd frame does not decompress ({err})") from None
            data = np.frombuffer(raw, dtype=np.uint8)
        if data.size != packed_bytes:
            raise _Corrupt(f"{data.size} bytes of packed bits where a mask of {n} entries needs {packed_bytes}")
        if n % 8 and data[-1] & ((1 << (8 - n % 8)) - 1):
            raise _Corrupt(f"the padding bits after entry {n} are set: the mask is longer than its shape")
        flat = np.unpackbits(data, count=n).view(bool)
    else:
        raise _Corrupt(f"unknown codec {codec!r} (this hf_lottery reads {', '.join(CODECS)}; upgrade it)")
    found = int(np.count_nonzero(flat))
    if found != kept:
        raise _Corrupt(f"decoded {found} kept entries, the header says {kept}")
    return torch.from_numpy(flat).reshape(shape)


# -- Files ----------------------------------------------------------------------------------------------------
def save_masks(path: str | os.PathLike, masks: Mapping[str, torch.Tensor], codec: str | None = None) -> None:
    """Write `{name: BoolTensor}` to a safetensors file of encoded masks, atomically (see the module docstring).

    Args:
        path (`str` or `os.PathLike`): the file to write.
        masks (`Mapping[str, torch.Tensor]`): the masks, in the order to keep.
        codec (`str`, *optional*): force one codec for every tensor (tests, benchmarks); default: per tensor, the
            smallest.
    """
    tensors: dict[str, torch.Tensor] = {}
    headers: list[dict[str, Any]] = []
    for name, mask in masks.items():
        data, header = encode_mask(mask, codec)
        tensors[name] = torch.from_numpy(data.copy())
        headers.append({"name": name, **header})
    metadata = {MASK_FORMAT_KEY: str(MASK_FORMAT_VERSION), MASK_METADATA_KEY: json.dumps(headers)}
    save_tensors(path, tensors, metadata=metadata)


def _diagnose_truncation(path: Path) -> str:
    """Name the first tensor whose bytes lie past the end of a damaged safetensors file, when the header reads."""
    try:
        raw = path.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])
        available = len(raw) - 8 - header_len
        entries = sorted(
            ((v["data_offsets"][1], k) for k, v in header.items() if k != "__metadata__"), key=lambda e: e[0]
        )
    except Exception:  # the header itself is unreadable; the caller says so
        return "its header is unreadable"
    for end, name in entries:
        if end > available:
            return f"tensor {name!r} ends at byte {end} of the data section, which holds only {available} bytes"
    return "its header is inconsistent with its size"


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by [`save_masks`]: `{name: BoolTensor}` in the saved order.

    Raises:
        `ValueError`: naming the file (and the tensor, where one is at fault) when the file is truncated,
        damaged, or of an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No mask file at {path}.")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError for truncated or garbled files
        raise ValueError(
            f"Cannot read the mask file {path}: {_diagnose_truncation(path)} ({err}). The file is truncated or "
            "damaged; save the ticket again or download it anew."
        ) from None
    version = metadata.get(MASK_FORMAT_KEY)
    if version is None or MASK_METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not an hf_lottery mask file: its metadata lacks {MASK_FORMAT_KEY!r}.")
    if not version.isdigit() or int(version) > MASK_FORMAT_VERSION:
        raise ValueError(
            f"{path} uses mask format {version!r}; this hf_lottery reads up to {MASK_FORMAT_VERSION}. "
            "Upgrade hf_lottery (pip install -U hf-lottery)."
        )
    try:
        headers = json.loads(metadata[MASK_METADATA_KEY])
        names = [h["name"] for h in headers]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: the per-tensor headers ({MASK_METADATA_KEY!r}) are unreadable ({err}).") from None
    for name in names:
        if name not in stored:
            raise ValueError(f"{path}: tensor {name!r} is listed in the headers but missing from the file.")
    for name in stored:
        if name not in names:
            raise ValueError(f"{path}: tensor {name!r} is stored but has no header.")
    masks: dict[str, torch.Tensor] = {}
    for header in headers:
        name = header["name"]
        data = stored[name]
        try:
            if data.dtype != np.uint8 or data.ndim != 1:
                raise _Corrupt(f"stored as {data.dtype} of shape {data.shape}, expected 1-D uint8")
            masks[name] = decode_mask(data, header)
        except _Corrupt as err:
            raise ValueError(f"Corrupted mask file {path}, tensor {name!r}: {err}.") from None
    return masks
