"""CPU package and DRAM energy from Linux powercap (Intel RAPL, and AMD's through the same interface).

Each zone ``/sys/class/powercap/intel-rapl:N`` (name ``package-N``) and its subzones (name ``dram``, ``core``,
...) count microjoules in ``energy_uj`` up to ``max_energy_range_uj``, then wrap. A window reads every
package and DRAM zone at its start and end. Where the tree is missing (VMs, containers, non-x86) or not
readable (recent kernels restrict ``energy_uj`` to root), ``reason`` says so and every figure is None:
never 0 for "not measured".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/class/powercap")
DOMAINS = ("package", "dram")


@dataclass(frozen=True)
class Zone:
    domain: str  # package or dram
    path: Path
    max_uj: int


@dataclass(frozen=True)
class RaplWindow:
    joules: dict[str, float] | None  # per domain, summed over sockets
    seconds: float
    reason: str | None = None


class RaplMeter:
    def __init__(self, root: Path = ROOT) -> None:
        self.zones: list[Zone] = []
        self.reason: str | None = None
        if not root.is_dir():
            self.reason = f"no powercap tree at {root} (no RAPL here: a VM, a container or another CPU)"
            return
        for zone in sorted(root.glob("intel-rapl:*")):
            try:
                name = (zone / "name").read_text().strip()
            except OSError:
                continue
            domain = "package" if name.startswith("package") else name
            if domain not in DOMAINS:
                continue
            try:
                (zone / "energy_uj").read_text()
                max_uj = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                self.reason = f"{zone / 'energy_uj'} is not readable by this user (root only on this kernel)"
                self.zones = []
                return
            except (OSError, ValueError) as exc:
                self.reason = f"{zone} could not be read: {exc}"
                continue
            self.zones.append(Zone(domain, zone, max_uj))
        if not self.zones and self.reason is None:
            self.reason = f"no package or dram zone under {root}"
        elif self.zones:
            self.reason = None

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def _read(self) -> list[int]:
        return [int((z.path / "energy_uj").read_text()) for z in self.zones]

    def begin(self) -> tuple[float, list[int]]:
        return time.perf_counter(), self._read() if self.available else []

    def end(self, start: tuple[float, list[int]]) -> RaplWindow:
        t0, first = start
        seconds = time.perf_counter() - t0
        if not self.available:
            return RaplWindow(None, seconds, self.reason)
        joules: dict[str, float] = {}
        for zone, a, b in zip(self.zones, first, self._read()):
            delta = b - a if b >= a else b + zone.max_uj - a  # the counter wrapped once
            joules[zone.domain] = joules.get(zone.domain, 0.0) + delta / 1e6
        return RaplWindow(joules, seconds)
