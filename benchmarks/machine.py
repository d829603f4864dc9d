"""What machine a run happened on, and CPU time of a process tree read from /proc."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the command name may hold spaces and parentheses: split after the last ')'
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_by_pid(root: int) -> dict[int, float]:
    """User + system CPU seconds of root and each live descendant (each including its reaped children)."""
    out = {}
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields:
            # utime, stime, cutime, cstime (fields 14-17 of proc(5); index 11-14 after the name)
            out[pid] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
    return out


def cpu_split(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """CPU seconds each process of the tree used between two samples, busiest first (e.g. per worker)."""
    return sorted((round(cpu - before.get(pid, 0.0), 3) for pid, cpu in after.items()), reverse=True)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool_version(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0] if text else None


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def cpu_idle() -> dict:
    """How an idle CPU waits. It decides what a request costs at low load: on a VM, a halted vCPU
    is woken through the hypervisor, tens of µs; cpuidle-haltpoll's guest_halt_poll_ns (the
    kernel's default 200000) polls that long before halting. The mlp at c=1 on a 2-vCPU KVM guest
    ran 3,454 requests/s with it at 0 and 7,939 with 200000: report it beside every result."""
    return {
        "driver": _read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": _read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    }


def cpu_idle_words(idle: dict) -> str:
    if not idle.get("driver"):
        return "cpuidle: not reported"
    words = f"cpuidle {idle['driver']}"
    if idle.get("guest_halt_poll_ns") is not None:
        words += f" (guest_halt_poll_ns {idle['guest_halt_poll_ns']})"
    return words


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def describe() -> dict:
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {d: _version(d) for d in ("gateway", "onnxruntime", "numpy", "grpcio", "protobuf", "uvloop")},
        "tools": {"h2load": _tool_version(["h2load", "--version"]), "wrk": _tool_version(["wrk", "-v"])},
        "cpu_idle": cpu_idle(),
        "load_average_at_start": load_average(),
    }


def summary_line(machine: dict) -> str:
    pk = machine["packages"]
    return (
        f"{machine['cores']} cores ({machine['cores_usable']} usable), {machine['cpu_model']}, "
        f"{machine['memory_gib']} GiB; Linux {machine['kernel']}, {cpu_idle_words(machine.get('cpu_idle', {}))}; "
        f"Python {machine['python']}; "
        f"gateway {pk.get('gateway')}, onnxruntime {pk.get('onnxruntime')}, numpy {pk.get('numpy')}, "
        f"grpcio {pk.get('grpcio')}; load average at start {machine['load_average_at_start'][0]:.2f}"
    )
