"""Shared pieces of the dataset families: registry, metadata, data root, missing data."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from torch.utils.data import Dataset

from dflearn.registry import Registry

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, plus its training augmentation policy.

    ``augmentation`` is one of ``"none"``, ``"flip"`` or ``"randaugment-cutout"``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str = "none"


# A registered factory builds the raw split: ``factory(root, train, download)`` returns a dataset
# of ``(PIL image, int label)``; transforms are applied on top, so train/val can share one copy.
DATASETS: Registry[Dataset] = Registry("dataset")
INFOS: dict[str, DatasetInfo] = {}


class DatasetNotFoundError(RuntimeError):
    """A dataset is absent under the data root and could not be fetched or copied."""


def register(info: DatasetInfo) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator filing a raw-split factory and its metadata under ``info.name``."""

    def add(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        INFOS[info.name] = info
        return DATASETS.register(info.name)(factory)

    return add


def default_root() -> Path:
    """``$DFLEARN_DATA`` when set, else ``~/.cache/dflearn/data``; read at call time."""
    env = os.environ.get("DFLEARN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dflearn" / "data"


def network_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    torchvision's download has no timeout of its own, so an offline machine could hang in it;
    the probe runs in a daemon thread because name resolution ignores socket timeouts.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def ensure_present(
    name: str,
    root: Path,
    present: Callable[[], bool],
    *,
    download: bool,
    url: str | None = None,
    fetch: Callable[[], object] | None = None,
    fallback: Callable[[], object] | None = None,
    hints: Sequence[str] = (),
) -> None:
    """Make dataset ``name`` present under ``root``: download, then ``fallback``, else raise.

    ``fetch`` downloads from ``url`` (tried only when the host answers a quick probe);
    ``fallback`` copies from a local source; ``hints`` are the manual ways to get the data.
    """
    if present():
        return
    notes = []
    if fetch is not None and url is not None:
        notes.append(_try_download(url, fetch) if download else "download was disabled")
    if not present() and fallback is not None:
        fallback()
    if present():
        return
    ways = [f"run with network access (download enabled) to fetch it from {url}"] if fetch else []
    ways += [*hints, f"or pass --data-dir / set DFLEARN_DATA to a folder holding it (now: {root})"]
    raise DatasetNotFoundError(
        f"dataset {name!r} not found under {root}"
        + "".join(f"; {note}" for note in notes)
        + ". To get it:\n"
        + "\n".join(f"  - {way}" for way in ways)
    )


def _try_download(url: str, fetch: Callable[[], object]) -> str:
    """Run ``fetch`` if ``url``'s host is reachable; a note on what happened."""
    if not network_reachable(url):
        return f"download skipped: {urlparse(url).hostname} is unreachable (offline?)"
    try:
        fetch()
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises both
        return f"download failed: {err}"
    return "download finished but the files are still missing"
