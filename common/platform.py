"""Facts about the machine and about compiled files, shared by the compiler and the
device runtime (no heavy imports)."""

from __future__ import annotations

import platform

_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}


def host_arch() -> str:
    """This machine's CPU architecture in sliver's spelling (``x86_64``, ``aarch64``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def elf_arch(data: bytes) -> str | None:
    """The CPU architecture an ELF shared object was built for (None if not ELF)."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    order = "little" if data[5] == 1 else "big"
    machine = int.from_bytes(data[18:20], order)
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
