"""CPU time read from /proc (Linux): what a benchmark phase cost the machine and given processes.

`bench worker` uses it to say what bounds its throughput: when the machine's cores are busy, the
CPU each transition costs, and who spends it, is the limit; no faster database would help.
"""

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    machine_busy: float
    """Seconds all cores spent not idle since boot (user, system, interrupts, ...)."""
    processes: dict[int, float]
    """Seconds of CPU (user + system) of each process asked about, by pid."""


def available() -> bool:
    return Path("/proc/stat").exists()


def cores() -> int:
    return os.cpu_count() or 1


def snapshot(pids: list[int]) -> CpuSnapshot:
    return CpuSnapshot(machine_busy=_machine_busy_seconds(), processes={pid: _process_seconds(pid) for pid in pids})


def process_seconds(before: CpuSnapshot, after: CpuSnapshot, pids: list[int]) -> float:
    """CPU the processes spent between the snapshots (a process missing from either counts 0)."""
    return sum(max(0.0, after.processes.get(pid, 0.0) - before.processes.get(pid, 0.0)) for pid in pids)


def _machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    ticks = [int(value) for value in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / TICKS_PER_SECOND


def _process_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def resident_kib(pid: int) -> int:
    """The process's resident set size in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
