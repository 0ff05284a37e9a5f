"""What a Cloud TPU accelerator name means: chips, worker VMs, gcloud's spelling, software version.

v4 and v5p names count TensorCores (two per chip, four chips per VM); v5e and v6e names count chips
(up to 8 chips on one VM, 4 chips per VM in multi-host slices). Sources: Cloud TPU system
architecture pages for each generation; the peaks are dense bf16 per chip.
"""
from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Generation:
    gcloud_prefix: str  # how gcloud spells the accelerator type before "-N"
    cores_per_chip: int  # what the number in the name counts, per chip
    max_single_vm_chips: int
    chips_per_vm_multi: int
    runtime_version: str  # the software version Google lists for JAX on this generation
    peak_bf16_tflops: float
    hbm_gib: int


GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", 2, 4, 4, "tpu-ubuntu2204-base", 275.0, 32),
    "v5e": Generation("v5litepod", 1, 8, 4, "v2-alpha-tpuv5-lite", 197.0, 16),
    "v5p": Generation("v5p", 2, 4, 4, "v2-alpha-tpuv5", 459.0, 95),
    "v6e": Generation("v6e", 1, 8, 4, "v2-alpha-tpuv6e", 918.0, 32),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    generation: str
    size: int  # the number in the name
    chips: int
    vms: int  # worker VMs: the hosts that each run one process

    @property
    def spec(self) -> Generation:
        return GENERATIONS[self.generation]

    @property
    def accelerator_type(self) -> str:
        return f"{self.spec.gcloud_prefix}-{self.size}"

    @property
    def chips_per_vm(self) -> int:
        return self.chips // self.vms

    @property
    def multi_host(self) -> bool:
        return self.vms > 1

    def __str__(self) -> str:
        return f"{self.generation}-{self.size}"


def parse_slice(name: str) -> Slice:
    """Parses "v4-32", "v5e-16" (or gcloud's "v5litepod-16"), "v5p-8", "v6e-8".

    Raises ValueError naming the accepted forms for anything else.
    """
    m = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", name or "")
    gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in GENERATIONS:
        raise ValueError(
            f"unknown TPU slice {name!r}; use one of {sorted(GENERATIONS)} followed by -SIZE, "
            "e.g. v4-8, v4-32, v5e-16, v5p-8")
    spec = GENERATIONS[gen]
    size = int(m.group(2))
    if size <= 0 or size % spec.cores_per_chip:
        raise ValueError(f"TPU slice {name!r}: the size must be a positive multiple of "
                         f"{spec.cores_per_chip} for {gen}")
    chips = size // spec.cores_per_chip
    if chips <= spec.max_single_vm_chips:
        vms = 1
    elif chips % spec.chips_per_vm_multi:
        raise ValueError(f"TPU slice {name!r}: a multi-host {gen} slice has a multiple of "
                         f"{spec.chips_per_vm_multi} chips")
    else:
        vms = chips // spec.chips_per_vm_multi
    return Slice(gen, size, chips, vms)
