"""Device profiles: thread count, CPU affinity and a memory budget standing in for a device class.

On a host with fewer cores than a profile asks for, the profile runs with what exists and the
report says so (``threads_used`` < ``threads``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from gemma_edge.models.errors import InputError

__all__ = ["Profile", "PROFILES", "get_profile", "apply_profile"]


@dataclass(frozen=True)
class Profile:
    name: str
    threads: int
    memory_budget_mib: int
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    p.name: p
    for p in (
        Profile("edge-1t", 1, 2048, "single-core edge board (Cortex-A55 class), 2 GiB"),
        Profile("phone-mid", 2, 4096, "mid-range phone: 2 big cores, 4 GiB available to the app"),
        Profile("phone-high", 4, 8192, "flagship phone: 4 performance cores, 8 GiB available to the app"),
        Profile("host", os.cpu_count() or 1, 1 << 20, "this machine, all cores, no budget"),
    )
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise InputError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def apply_profile(p: Profile) -> dict:
    """Pin this process to the profile's cores and set torch's threads; return what was applied."""
    import torch

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    used = cpus[: p.threads]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, used)
    torch.set_num_threads(len(used))
    return {"threads_used": len(used), "cpus": used, "host_cpus": len(cpus)}
