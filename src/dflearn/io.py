"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every writer goes through :func:`atomic_writer`: the data goes to a temporary file in the
target's own directory (so that ``os.replace`` stays on one file system and is atomic), is
flushed and fsync'ed, and only then replaces the target. If writing fails, the temporary
file is removed and the target is left as it was.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_writer",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_torch_save",
    "json_safe",
]


def _default_mode() -> int:
    # mkstemp creates files readable by the owner only; results should get the permissions
    # any new file gets. Reading the umask means setting it, so do it once, at import.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. On an exception inside the block the
    temporary file is deleted and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    # The leading dot keeps half-written files out of casual listings and globs like *.png
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, _FILE_MODE)
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            # Without fsync a power cut after the rename could leave an empty target
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave the temp file behind
        _remove_quietly(tmp_name)
        raise


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (NaN is not valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (non-finite floats become ``null``)."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write one compact JSON document per line, atomically (the whole file is rewritten)."""
    lines = [json.dumps(json_safe(row), allow_nan=False) + "\n" for row in rows]
    atomic_write_text(path, "".join(lines))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file, so a kill leaves the old file."""
    import torch  # local import: this module must stay importable without torch for the CLI

    with atomic_writer(path, "wb") as handle:
        torch.save(obj, handle)
