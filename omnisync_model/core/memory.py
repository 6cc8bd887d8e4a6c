"""What memory a run may use: free system RAM (cgroup limits included) and free accelerator memory.

``host_memory_available()`` is the smallest of: ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can hand
out without swapping), the room left under every memory cgroup this process is in (v2 ``memory.max -
memory.current`` up the hierarchy, v1 ``memory.limit_in_bytes - memory.usage_in_bytes``), and the
``OMNISYNC_MEMORY_LIMIT`` environment variable (bytes, or with a K/M/G/T suffix: a cap the user sets to keep room
for other programs). None when none of them is known (not Linux, no psutil). ``device_memory_available(device)``
is the free memory of a CUDA device (free + cached by torch) or the host's for the CPU.

A :class:`MemoryBudget` pairs the two; :class:`MemoryNeed` lists what a run will allocate, per pool, and
:meth:`MemoryBudget.shortfall` says whether it fits. Refusals raise :class:`InsufficientMemoryError`, a
ValueError (the CLI ends it with a one-line error and exit status 2; ComfyUI shows the message on the node).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

log = logging.getLogger(__name__)

LIMIT_ENV = "OMNISYNC_MEMORY_LIMIT"
UNLIMITED = 1 << 60  # cgroup files hold huge numbers (or "max") for "no limit"
HEADROOM = 0.85  # plan with at most this share of what is free (allocator slack, other programs)
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class InsufficientMemoryError(ValueError):
    """A run that would need more memory than the machine can give it."""


def gib(n_bytes: Optional[float]) -> str:
    """Bytes as a short human figure: '6.2 GB' (GiB, written GB as most tools show it)."""
    if n_bytes is None:
        return "unknown"
    if n_bytes >= 1 << 30:
        return f"{n_bytes / (1 << 30):.1f} GB"
    if n_bytes >= 10 << 20:
        return f"{n_bytes / (1 << 20):.0f} MB"
    return f"{n_bytes / (1 << 20):.1f} MB"


def parse_size(text: str) -> int:
    """'24G', '512M', '1.5g', '1000000' -> bytes; ValueError otherwise."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B") if text.strip() else ""
    unit = value[-1:] if value[-1:] in _SUFFIX else ""
    number = value[: len(value) - len(unit)] if unit else value
    try:
        size = float(number) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"{LIMIT_ENV} must be a size such as 8G or 512M, got {text!r}") from None
    if not size > 0:
        raise ValueError(f"{LIMIT_ENV} must be positive, got {text!r}")
    return int(size)


def meminfo_available(path: Union[str, Path] = "/proc/meminfo") -> Optional[int]:
    """``MemAvailable`` in bytes (None when the file or the field is missing)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _room(limit: Optional[int], used: Optional[int]) -> Optional[int]:
    if limit is None or used is None or limit >= UNLIMITED:
        return None
    return max(0, limit - used)


def cgroup_memory_left(proc_cgroup: Union[str, Path] = "/proc/self/cgroup",
                       root: Union[str, Path] = "/sys/fs/cgroup") -> Optional[int]:
    """Bytes this process may still allocate under its memory cgroups (v2 and v1); None when unlimited."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2: the limit of every ancestor applies
            group = root / rel
            while True:
                room = _room(_read_int(group / "memory.max"), _read_int(group / "memory.current"))
                if room is not None:
                    rooms.append(room)
                if group == root or root not in group.parents:
                    break
                group = group.parent
        elif "memory" in controllers.split(","):  # cgroup v1 (containers often mount their own group at the root)
            for group in (root / "memory" / rel, root / "memory"):
                room = _room(_read_int(group / "memory.limit_in_bytes"), _read_int(group / "memory.usage_in_bytes"))
                if room is not None:
                    rooms.append(room)
                    break
    return min(rooms) if rooms else None


def user_limit() -> Optional[int]:
    text = os.environ.get(LIMIT_ENV, "").strip()
    return parse_size(text) if text else None


def host_memory_available() -> Optional[int]:
    """Bytes of system RAM this process can still get (see the module docstring); None when unknown."""
    known = [v for v in (meminfo_available(), cgroup_memory_left(), user_limit()) if v is not None]
    if not known:
        try:
            import psutil  # optional: only where /proc is missing (macOS, Windows)
        except ImportError:
            return None
        known.append(int(psutil.virtual_memory().available))
    return min(known)


def device_memory_available(device: Union[str, torch.device]) -> Optional[int]:
    """Free bytes on ``device``: CUDA free + memory torch holds but does not use; the host's for CPU / others."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    return host_memory_available()


@dataclass(frozen=True)
class MemoryBudget:
    """Free bytes of the host (system RAM) and of the compute device; ``device`` None: the device is the host."""

    host: Optional[int]
    device: Optional[int] = None
    device_name: str = "cpu"

    @property
    def shared(self) -> bool:
        return self.device is None

    @classmethod
    def detect(cls, device: Union[str, torch.device] = "cpu") -> "MemoryBudget":
        device = torch.device(device)
        host = host_memory_available()
        if device.type == "cpu":
            return cls(host, None, "cpu")
        return cls(host, device_memory_available(device), str(device))

    def shortfall(self, need: "MemoryNeed") -> Optional[str]:
        """None when ``need`` fits in HEADROOM of what is free; else a phrase saying what is short."""
        pools = [("RAM", need.host + (need.device if self.shared else 0), self.host)]
        if not self.shared:
            pools.append((f"{self.device_name} memory", need.device, self.device))
        for name, wanted, free in pools:
            if free is not None and wanted > HEADROOM * free:
                return f"{gib(wanted)} of {name}, more than {HEADROOM:.0%} of the {gib(free)} free"
        return None


@dataclass(frozen=True)
class MemoryNeed:
    """What a run allocates: named parts in bytes, on the host (RAM) or the compute device."""

    parts: tuple[tuple[str, int, str], ...] = field(default_factory=tuple)  # (what, bytes, "host" / "device")

    def plus(self, what: str, n_bytes: float, pool: str = "host") -> "MemoryNeed":
        if pool not in ("host", "device"):
            raise ValueError(f"pool must be 'host' or 'device', got {pool!r}")
        return MemoryNeed(self.parts + ((what, int(n_bytes), pool),))

    def __add__(self, other: "MemoryNeed") -> "MemoryNeed":
        return MemoryNeed(self.parts + other.parts)

    @property
    def host(self) -> int:
        return sum(b for _, b, pool in self.parts if pool == "host")

    @property
    def device(self) -> int:
        return sum(b for _, b, pool in self.parts if pool == "device")

    @property
    def total(self) -> int:
        return self.host + self.device

    def describe(self) -> str:
        """'output 6.2 GB + activations 1.4 GB + ...' (largest first)."""
        items = sorted(self.parts, key=lambda p: -p[1])
        return " + ".join(f"{what} {gib(b)}" for what, b, _ in items if b > 0)
