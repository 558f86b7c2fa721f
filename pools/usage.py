"""What a member uses, read from the kernel: cgroup files (v1 and v2) for containers, /proc for processes.

These readers are what `Backend.usage` runs every sampling round for every member, so they read a
handful of small files and parse them without allocating much; they never raise for a member that
has just gone (its files vanish between two reads): they return None and the member is left out.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

# cgroup v1 reports "no limit" as the largest page-aligned counter (0x7FFFFFFFFFFFF000 on 4 KiB
# pages); anything at or above 2**62 bytes is no limit on any machine that exists.
UNLIMITED_BYTES = 1 << 62
_TICK = os.sysconf("SC_CLK_TCK")   # /proc/<pid>/stat counts CPU in these
_READ_ERRORS = (OSError, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class MemberUsage:
    instance_id: str
    cpu_seconds: float              # cumulative user+system CPU of the member since it started
    memory_bytes: int               # working set now: cgroup usage minus inactive page cache; process: VmRSS of the tree
    memory_peak_bytes: int          # peak since start: cgroup max usage / memory.peak; process: max VmHWM of the tree
    net_rx_bytes: int | None        # None where the member has no network namespace of its own
    net_tx_bytes: int | None
    oom_kills: int = 0              # cumulative OOM kills in the member's cgroup
    cpu_throttled_seconds: float = 0.0   # cumulative CFS throttled time
    cpu_limit: float | None = None  # cores allowed now (CFS quota / period), None = unlimited
    memory_limit: int | None = None  # bytes, None = unlimited


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Per-member limits that override the spec's `cpus` / `memory` at launch (the right-sizing
    recommender's); a None field leaves the spec's value."""
    cpus: float | None
    memory_bytes: int | None

    def over(self, cpus: float | None, memory_bytes: int | None) -> tuple[float | None, int | None]:
        """The (cpus, memory) a member gets when the spec says `cpus` and `memory_bytes`."""
        return (self.cpus if self.cpus is not None else cpus,
                self.memory_bytes if self.memory_bytes is not None else memory_bytes)


@dataclass(frozen=True, slots=True)
class Cgroup:
    """Where one process's cgroup files are: per controller on v1, one directory for all on v2."""
    version: Literal[1, 2]
    path: str       # as /proc/<pid>/cgroup names it (the memory controller's on v1): holds a container's id
    cpuacct: str    # directory of cpuacct.usage (v1) / cpu.stat (v2)
    cpu: str        # directory of cpu.stat's throttling and the CFS quota
    memory: str


# ---------------------------------------------------------------------------------- cgroups
@functools.cache
def _mounts() -> dict[str, tuple[str, str]]:
    """Controller ("memory", "cpu", ..., "" for the v2 hierarchy) -> (the mount's root in the hierarchy,
    its mount point). Read once: cgroup hierarchies are mounted at boot, not while we run."""
    found: dict[str, tuple[str, str]] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = fields[3], fields[4], tail[0]
        keys = [""] if fstype == "cgroup2" else tail[2].split(",") if fstype == "cgroup" else []
        for key in keys:
            found.setdefault(key, (root, point))   # the first mount of a hierarchy is the host's view
    return found


def _directory(controller: str, path: str) -> str | None:
    mount = _mounts().get(controller)
    if mount is None:
        return None
    root, point = mount
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None   # outside what this mount shows (another cgroup namespace's view)
    inner = path if root == "/" else path[len(root):]
    return point + inner if inner != "/" else point


def cgroup_of(pid: int) -> Cgroup | None:
    """The cgroup of a live process, or None when it is gone or its cgroup is not mounted here.

    Hybrid hosts (v1 controllers plus an empty v2 hierarchy) list both: v1 wins when it holds the
    memory and cpuacct controllers, as the kernel only accounts a controller in one hierarchy."""
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return None
    v1: dict[str, str] = {}
    unified = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and not controllers:
            unified = path
        elif controllers:
            v1.update((c, path) for c in controllers.split(","))
    if "memory" in v1 and "cpuacct" in v1:
        cpuacct, memory = _directory("cpuacct", v1["cpuacct"]), _directory("memory", v1["memory"])
        # Without a cpu controller the quota and throttling read as none (its files are absent).
        cpu = _directory("cpu", v1["cpu"]) if "cpu" in v1 else cpuacct
        if cpuacct is None or cpu is None or memory is None:
            return None
        return Cgroup(1, v1["memory"], cpuacct, cpu, memory)
    if unified is not None:
        d = _directory("", unified)
        return Cgroup(2, unified, d, d, d) if d is not None else None
    return None


def cgroup_usage(instance_id: str, cg: Cgroup, net_pid: int | None) -> MemberUsage | None:
    """A cgroup's counters; `net_pid`: a process in the member's own network namespace (None: it has
    none, as with host networking). None when the cgroup is gone (the member stopped meanwhile)."""
    try:
        reading = _cgroup_v1(cg) if cg.version == 1 else _cgroup_v2(cg)
        rx, tx = net_bytes(net_pid) if net_pid is not None else (None, None)
    except _READ_ERRORS:
        return None
    if net_pid is not None and rx is None:
        return None   # the process is gone: the container stopped between the two reads
    cpu, memory, peak, ooms, throttled, cpu_limit, memory_limit = reading
    return MemberUsage(instance_id, cpu, memory, peak, rx, tx, ooms, throttled, cpu_limit, memory_limit)


def container_usage(instance_id: str, container_id: str, pid: int, own_netns: bool) -> MemberUsage | None:
    """A container's usage from the cgroup of its main process `pid` (State.Pid); None when `pid` is not
    in that container's cgroup any more (it restarted, or the pid is of another machine: a remote
    engine) or its files cannot be read here — the caller then asks the engine."""
    cg = cgroup_of(pid)
    if cg is None or container_id not in cg.path:
        return None
    return cgroup_usage(instance_id, cg, pid if own_netns else None)


_Reading = tuple[float, int, int, int, float, float | None, int | None]


def _cgroup_v1(cg: Cgroup) -> _Reading:
    cpu = int(_must(f"{cg.cpuacct}/cpuacct.usage")) / 1e9
    cpu_stat = _keyed(_read(f"{cg.cpu}/cpu.stat") or "")
    quota, period = _read(f"{cg.cpu}/cpu.cfs_quota_us"), _read(f"{cg.cpu}/cpu.cfs_period_us")
    cpu_limit = int(quota) / int(period) if quota and period and int(quota) > 0 else None
    usage = int(_must(f"{cg.memory}/memory.usage_in_bytes"))
    inactive = _keyed(_must(f"{cg.memory}/memory.stat")).get("total_inactive_file", 0)
    peak = int(_must(f"{cg.memory}/memory.max_usage_in_bytes"))
    limit = int(_must(f"{cg.memory}/memory.limit_in_bytes"))
    ooms = _keyed(_read(f"{cg.memory}/memory.oom_control") or "").get("oom_kill", 0)
    return (cpu, max(0, usage - inactive), peak, ooms, cpu_stat.get("throttled_time", 0) / 1e9, cpu_limit,
            limit if limit < UNLIMITED_BYTES else None)


def _cgroup_v2(cg: Cgroup) -> _Reading:
    cpu_stat = _keyed(_must(f"{cg.cpu}/cpu.stat"))
    quota, _, period = (_read(f"{cg.cpu}/cpu.max") or "max").partition(" ")
    usage = int(_must(f"{cg.memory}/memory.current"))
    inactive = _keyed(_must(f"{cg.memory}/memory.stat")).get("inactive_file", 0)
    peak = _read(f"{cg.memory}/memory.peak")   # kernels before 5.19 have none
    limit = _must(f"{cg.memory}/memory.max")
    ooms = _keyed(_read(f"{cg.memory}/memory.events") or "").get("oom_kill", 0)
    return (cpu_stat["usage_usec"] / 1e6, max(0, usage - inactive), int(peak) if peak else usage, ooms,
            cpu_stat.get("throttled_usec", 0) / 1e6, int(quota) / int(period) if quota != "max" else None,
            int(limit) if limit != "max" else None)


# ---------------------------------------------------------------------------------- /proc
def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, parents first; what has gone meanwhile is skipped."""
    tree, i = [pid], 0
    while i < len(tree):
        task_dir = f"/proc/{tree[i]}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            tids = []
        for tid in tids:
            tree.extend(int(c) for c in (_read(f"{task_dir}/{tid}/children") or "").split())
        i += 1
    return tree


def process_usage(instance_id: str, pid: int) -> MemberUsage | None:
    """CPU and memory of a process tree (no cgroup of its own: no limits, no OOM count, no netns).

    CPU includes the reaped children of every process in the tree (cutime/cstime), so work done
    by short-lived helpers stays counted. None when `pid` itself is gone."""
    cpu_ticks, rss_kb, hwm_kb = 0, 0, 0
    for p in descendants(pid):
        stat, status = _read(f"/proc/{p}/stat"), _read(f"/proc/{p}/status")
        if stat is None or status is None:
            if p == pid:
                return None
            continue   # a descendant that ended while we walked
        try:
            ticks = sum(int(f) for f in stat.rpartition(")")[2].split()[11:15])   # utime stime cutime cstime
            kb = _status_kb(status)
        except _READ_ERRORS:
            continue
        cpu_ticks += ticks
        rss_kb += kb.get("VmRSS", 0)
        hwm_kb = max(hwm_kb, kb.get("VmHWM", 0))
    # The tree's summed RSS can pass any one process's high-water mark: the peak is never below now.
    return MemberUsage(instance_id, cpu_ticks / _TICK, rss_kb << 10, max(hwm_kb, rss_kb) << 10, None, None)


def net_bytes(pid: int) -> tuple[int | None, int | None]:
    """Received and sent bytes of every interface but loopback in `pid`'s network namespace; (None,
    None) when the process is gone."""
    text = _read(f"/proc/{pid}/net/dev")
    if text is None:
        return None, None
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = counters.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


# ---------------------------------------------------------------------------------- files
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _must(path: str) -> str:
    """A file the reading cannot do without; its absence means the cgroup is gone."""
    with open(path) as f:
        return f.read().strip()


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat, memory.events, memory.oom_control)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            out[key] = int(value)
    return out


def _status_kb(status: str) -> dict[str, int]:
    out = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, _, value = line.partition(":")
            out[key] = int(value.split()[0])
    return out
