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

A mask file is untrusted input, and its bytes can claim far more entries than they hold (a few bytes of rice
code, or a zstd frame, can stand for gigabytes). So every size is checked before anything is allocated: the
shape against the shape expected (the ticket config's) and against `MAX_MASK_ENTRIES`, zstd output read through
a streaming reader that stops one byte past the expected size, rice counts and every gap bounded by the shape.
Loading allocates at most a small multiple of the masks' true size (about 9 bytes per entry for rice, 2 for the
others), whatever the file claims.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np
import torch
import zstandard
from safetensors import safe_open

from ..constants import MASK_FORMAT_KEY, MASK_FORMAT_VERSION, MASK_METADATA_KEY
from ..utils.io import save_tensors

CODECS = ("bits", "zstd", "rice")
# The largest mask tensor a file may describe (4.3e9 entries, e.g. a 262,144 x 16,384 embedding): a bound on what
# decoding allocates when no expected shape is known.
MAX_MASK_ENTRIES = 1 << 32
# zstd back-references reach at most this far (a window the decoder must allocate); the encoder's level 3 uses 1-8 MiB.
_ZSTD_MAX_WINDOW = 1 << 23
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


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rice_decode(data: np.ndarray, n: int, kept: int, fields: Mapping[str, Any]) -> np.ndarray:
    minority, count, k, unary_bits = (fields.get(key) for key in ("minority", "count", "k", "unary_bits"))
    if not isinstance(minority, bool) or not (_is_count(count) and _is_count(k) and _is_count(unary_bits)):
        raise _Corrupt("invalid rice fields (minority, count, k, unary_bits)")
    if k > 62 or count != (kept if minority else n - kept):
        raise _Corrupt(f"invalid rice fields: k={k}, count={count} for {n} entries of which {kept} are kept")
    unary_bytes = (unary_bits + 7) // 8
    expected = unary_bytes + ((count + 1) * k + 7) // 8
    if data.size != expected:  # also bounds unary_bits and count by the bytes actually stored
        raise _Corrupt(f"{data.size} bytes stored where the rice fields announce {expected}")
    unary = np.unpackbits(data[:unary_bytes], count=unary_bits)
    ends = np.flatnonzero(unary == 0)
    del unary
    if ends.size != count + 1:
        raise _Corrupt(f"the unary stream holds {ends.size - 1} gaps, the header {count}")
    gaps = np.diff(ends, prepend=-1) - 1
    del ends
    # Every gap is at most n: checked on the quotients before shifting, so nothing overflows int64.
    if int(gaps.max()) > n >> k:
        raise _Corrupt(f"a gap exceeds the {n} entries of the shape")
    if k:
        bits = np.unpackbits(data[unary_bytes:], count=(count + 1) * k).reshape(count + 1, k)
        gaps <<= k
        for j in range(k):
            gaps |= bits[:, j].astype(np.int64) << (k - 1 - j)
        del bits
    # The positions end exactly at the sentinel n; summed in float64 first, as count gaps of up to n each may
    # exceed int64.
    if np.add.reduce(gaps, dtype=np.float64) + count > n + 0.5:
        raise _Corrupt(f"the gaps decode to more than the {n} entries of the shape")
    gaps += 1
    positions = np.cumsum(gaps, out=gaps) - 1
    if positions[-1] != n:
        raise _Corrupt(f"the gaps decode to {int(positions[-1])} entries, the shape has {n}")
    flat = np.full(n, not minority, dtype=bool)
    flat[positions[:-1]] = minority
    return flat


def _zstd_decode(data: np.ndarray, size: int) -> np.ndarray:
    """The packed bits of a zstd frame, read through a streaming reader that stops one byte past `size`."""
    try:
        declared = zstandard.frame_content_size(data.tobytes()[:18])
    except zstandard.ZstdError as err:
        raise _Corrupt(f"zstd frame does not decompress ({err})") from None
    if declared >= 0 and declared != size:
        raise _Corrupt(f"the zstd frame declares {declared} bytes where a mask of this shape packs into {size}")
    out = bytearray()
    try:
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        with decompressor.stream_reader(data.tobytes(), read_across_frames=False) as reader:
            while len(out) <= size:
                chunk = reader.read(min(size + 1 - len(out), 1 << 20))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as err:
        raise _Corrupt(f"zstd frame does not decompress ({err})") from None
    if len(out) > size:
        raise _Corrupt(f"the zstd frame holds more than the {size} bytes a mask of this shape packs into")
    return np.frombuffer(bytes(out), dtype=np.uint8)


def check_shape(shape: Any, expected: Any = None) -> int:
    """The number of entries of a mask header's `shape`, after checking it is a list of sizes within
    `MAX_MASK_ENTRIES` (and equal to `expected` when given). Raises `_Corrupt` (a `ValueError`)."""
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(s) for s in shape):
        raise _Corrupt(f"invalid shape {str(shape)[:80]}")
    if expected is not None and shape != list(expected):
        raise _Corrupt(f"its shape {shape} disagrees with the ticket config's {list(expected)}")
    n = math.prod(shape)
    if n > MAX_MASK_ENTRIES:
        raise _Corrupt(f"shape {shape} claims {n} entries, more than the {MAX_MASK_ENTRIES} a mask tensor may hold")
    return n


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
        `ValueError`: when the bytes or the header are damaged (digest, codec fields or decoded length), or the
        shape claims more than `MAX_MASK_ENTRIES` entries.
    """
    if not isinstance(header, Mapping):
        raise _Corrupt(f"the header is a {type(header).__name__}, not an object")
    shape = header.get("shape")
    n = check_shape(shape)
    kept = header.get("kept")
    if not _is_count(kept) or kept > n:
        raise _Corrupt(f"invalid kept count {str(kept)[:40]} for {n} entries")
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if hashlib.sha256(data.tobytes()).hexdigest() != header.get("sha256"):
        raise _Corrupt("the stored bytes do not match their sha256 digest (damaged or edited file)")
    codec = header.get("codec")
    packed_bytes = (n + 7) // 8
    if codec == "rice":
        flat = _rice_decode(data, n, kept, header)
    elif codec in ("bits", "zstd"):
        if codec == "zstd":
            data = _zstd_decode(data, packed_bytes)
        if data.size != packed_bytes:
            raise _Corrupt(f"{data.size} bytes of packed bits where a mask of {n} entries needs {packed_bytes}")
        if n % 8 and data[-1] & ((1 << (8 - n % 8)) - 1):
            raise _Corrupt(f"the padding bits after entry {n} are set: the mask is longer than its shape")
        flat = np.unpackbits(data, count=n).view(bool)
    else:
        raise _Corrupt(f"unknown codec {str(codec)[:40]!r} (this hf_lottery reads {', '.join(CODECS)}; upgrade it)")
    found = int(np.count_nonzero(flat))
    if found != kept:
        raise _Corrupt(f"decoded {found} kept entries, the header says {kept}")
    return torch.from_numpy(flat).reshape(cast(list[int], shape))  # a list of sizes: check_shape checked it


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
    """Name the first tensor whose bytes lie past the end of a damaged safetensors file, when the header reads
    (only the header is read, at most 100 MB as safetensors allows)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(size - 8, 100_000_000):
                return "its header length is larger than the file"
            header = json.loads(f.read(header_len))
        available = size - 8 - header_len
        entries = sorted(
            ((int(v["data_offsets"][1]), str(k)) for k, v in header.items() if k != "__metadata__"), key=lambda e: e[0]
        )
    except Exception:  # the header itself is unreadable; the caller says so
        return "its header is unreadable"
    for end, name in entries:
        if end > available:
            return f"tensor {name!r} ends at byte {end} of the data section, which holds only {available} bytes"
    return "its header is inconsistent with its size"


def _read_headers(path: Path, text: str) -> list[dict[str, Any]]:
    """The per-tensor headers of the metadata: a list of objects with distinct string names."""
    try:
        headers = json.loads(text)
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ValueError(
            f"{path}: the per-tensor headers ({MASK_METADATA_KEY!r}) are unreadable ({reason})."
        ) from None
    if not isinstance(headers, list) or not all(
        isinstance(h, dict) and isinstance(h.get("name"), str) for h in headers
    ):
        raise ValueError(
            f"{path}: the per-tensor headers ({MASK_METADATA_KEY!r}) must be a list of objects with a string 'name'."
        )
    names = [h["name"] for h in headers]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a tensor name appears twice in the per-tensor headers ({MASK_METADATA_KEY!r}).")
    return headers


def load_masks(
    path: str | os.PathLike, expected_shapes: Sequence[tuple[str, Sequence[int]]] | None = None
) -> dict[str, torch.Tensor]:
    """Read a file written by [`save_masks`]: `{name: BoolTensor}` in the saved order.

    Args:
        path (`str` or `os.PathLike`): the mask file.
        expected_shapes (`Sequence[tuple[str, Sequence[int]]]`, *optional*): the `(name, shape)` of every tensor,
            in order, as the ticket config records them: checked before anything is decoded.

    Raises:
        `ValueError`: naming the file (and the tensor, where one is at fault) when the file is truncated,
        damaged, of an unknown format version, claims more entries than `MAX_MASK_ENTRIES` or other tensors than
        `expected_shapes`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No mask file at {path}.")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
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
            f"{path} uses mask format {version[:20]!r}; this hf_lottery reads up to {MASK_FORMAT_VERSION}. "
            "Upgrade hf_lottery (pip install -U hf-lottery)."
        )
    headers = _read_headers(path, metadata[MASK_METADATA_KEY])
    listed = [h["name"] for h in headers]
    for name in listed:
        if name not in names:
            raise ValueError(f"{path}: tensor {name!r} is listed in the headers but missing from the file.")
    for name in names:
        if name not in listed:
            raise ValueError(f"{path}: tensor {name!r} is stored but has no header.")
    if expected_shapes is not None:
        expected = [(str(name), list(shape)) for name, shape in expected_shapes]
        if [e[0] for e in expected] != listed:
            raise ValueError(
                f"{path} and the ticket config disagree: the file holds the masks of {len(listed)} tensors, the "
                f"config records {len(expected)} others or in another order (first stored {listed[:1]}, recorded "
                f"{expected[:1]})."
            )
    masks: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="np") as f:
        for i, header in enumerate(headers):
            name = header["name"]
            try:
                check_shape(header.get("shape"), expected[i][1] if expected_shapes is not None else None)
                data = f.get_tensor(name)  # the stored bytes: the file's own size bounds them
                if data.dtype != np.uint8 or data.ndim != 1:
                    raise _Corrupt(f"stored as {data.dtype} of shape {data.shape}, expected 1-D uint8")
                masks[name] = decode_mask(data, header)
            except _Corrupt as err:
                raise ValueError(f"Corrupted mask file {path}, tensor {name!r}: {err}.") from None
    return masks
