"""Atomic writes and safetensors helpers: nothing half-written on disk, nothing unpickled."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..constants import SAFETENSORS_METADATA, TENSOR_ORDER_METADATA_KEY


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically (`os.replace`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_json(path: str | os.PathLike, *, what: str, hint: str) -> Any:
    """The JSON value in `path`, or a `ValueError` naming the file (unreadable, not UTF-8, not JSON, nested too
    deeply) that ends with `hint` (what to do).

    `what` names the file's role in the message, e.g. "the ticket config".
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise ValueError(f"Cannot read {what} {path}: not valid JSON ({reason}). {hint}") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON with sorted keys, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save `{name: tensor}` to a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # safetensors returns names sorted; the order matters (tie-breaking, random scores), so it is recorded.
    order = {TENSOR_ORDER_METADATA_KEY: json.dumps(list(plain))}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={**SAFETENSORS_METADATA, **order, **(metadata or {})})


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file to CPU tensors, in the order they were saved in by [`save_tensors`]."""
    tensors = load_file(str(path), device="cpu")
    with safe_open(str(path), framework="pt") as f:
        order = (f.metadata() or {}).get(TENSOR_ORDER_METADATA_KEY)
    names = json.loads(order) if order else []
    if sorted(names) != sorted(tensors):
        return tensors
    return {name: tensors[name] for name in names}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _staging_prefix(target: Path) -> str:
    """The name prefix of this process's staging folders for `target`: host and pid say whose they are, so a
    later save can tell the debris of a killed one from the folder of a save still running."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f".{target.name}.tmp-{host}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or no valid pid: keep it
        return True
    return True


def sweep_staging_folders(target: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of `target` left by saves on this host whose process is gone (killed); returns
    them. Folders of running saves, of other hosts (a shared filesystem) and anything else are left alone."""
    target = Path(target)
    host_prefix = _staging_prefix(target).rsplit("-", 2)[0] + "-"
    pattern = re.compile(re.escape(host_prefix) + r"(\d+)-[A-Za-z0-9_]+")
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:  # a missing or unreadable parent: nothing to sweep
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `target`, removed on exit (after its files were moved, or on error).

    Staging folders that killed saves of `target` left behind are swept first."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging_folders(target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the renamed folder should not be
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_folder(staging: Path, target: Path, *, remove: Iterable[str] = (), last: str | None = None) -> None:
    """Move the files of `staging` into `target`: one rename for a new folder, else file by file.

    In an existing folder, the files named in `remove` that `staging` does not hold are deleted, and `last` (the
    file that makes the folder valid, e.g. a config recording the other files' digests) is replaced last.
    """
    for path in staging.iterdir():  # temporary files are created private (mkstemp); give them the usual mode
        if path.is_file():
            os.chmod(path, 0o666 & ~_umask())
    if not target.exists():
        try:
            os.rename(staging, target)
            return
        except OSError as err:
            if not target.is_dir():
                raise
            raise ValueError(
                f"Another process created {target} while this one was saving into it ({err.strerror}); nothing of "
                "this save was written. Save from one process only (is_main_process), or save again."
            ) from None
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        if (staging / name).is_dir():
            raise ValueError(f"Unexpected folder {name!r} in a checkpoint; cannot merge it into {target}.")
    for name in [n for n in names if n != last]:
        os.replace(staging / name, target / name)
    for name in [n for n in remove if n not in names]:
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    if last in names:
        os.replace(staging / last, target / last)
