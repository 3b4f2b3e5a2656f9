"""A Raspberry Pi's /proc/cpuinfo for the arm64 check's emulated CPU.

qemu-user (Debian bookworm's 7.2) hands an aarch64 process the host's x86 /proc/cpuinfo; the
CPU-detection code inside ai-edge-litert 2.3.0 dereferences a null pointer on it and the
interpreter dies with SIGSEGV before loading any model. tools/arm64/run.sh bind-mounts this
text over the chroot's /proc/cpuinfo: the CPU part and revision of the Pi's core, and the
feature flags the emulated CPU really advertises (AT_HWCAP / AT_HWCAP2).

`python -m tools.arm64.cpuinfo CPU HWCAP HWCAP2 PROCESSORS` prints it.
"""

from __future__ import annotations

import click

# Linux arm64 AT_HWCAP bit names, bit 0 upwards (arch/arm64/include/uapi/asm/hwcap.h).
HWCAP_NAMES = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
               "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop",
               "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat",
               "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")
# AT_HWCAP2, bit 0 upwards, as far as the flags that pick int8 / float16 kernels.
HWCAP2_NAMES = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4",
                "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16")
# qemu CPU name -> (the Pi it stands for, MIDR fields: implementer, variant, part, revision).
PI_CPUS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "cortex-a53": ("Raspberry Pi 3 / Zero 2 W", (0x41, 0x0, 0xD03, 4)),
    "cortex-a72": ("Raspberry Pi 4", (0x41, 0x0, 0xD08, 3)),
    "cortex-a76": ("Raspberry Pi 5", (0x41, 0x4, 0xD0B, 1)),
}


def features(hwcap: int, hwcap2: int) -> list[str]:
    """The /proc/cpuinfo feature names of the AT_HWCAP and AT_HWCAP2 bits that are set."""
    return ([name for bit, name in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
            + [name for bit, name in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1])


def cpuinfo_text(cpu: str, hwcap: int, hwcap2: int, processors: int) -> str:
    """/proc/cpuinfo as an arm64 Linux kernel writes it, for `processors` cores of `cpu`."""
    if cpu not in PI_CPUS:
        raise ValueError(f"unknown CPU {cpu!r}; known: {', '.join(PI_CPUS)}")
    if processors < 1:
        raise ValueError(f"need at least one processor, got {processors}")
    implementer, variant, part, revision = PI_CPUS[cpu][1]
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {' '.join(features(hwcap, hwcap2))}\n"
             f"CPU implementer\t: {implementer:#x}\nCPU architecture: 8\n"
             f"CPU variant\t: {variant:#x}\nCPU part\t: {part:#05x}\n"
             f"CPU revision\t: {revision}\n")
    return "".join(f"processor\t: {n}\n{block}\n" for n in range(processors))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cpu", type=click.Choice(sorted(PI_CPUS)))
@click.argument("hwcap", type=click.IntRange(0))
@click.argument("hwcap2", type=click.IntRange(0))
@click.argument("processors", type=click.IntRange(1))
def main(cpu: str, hwcap: int, hwcap2: int, processors: int) -> None:
    """Print /proc/cpuinfo for PROCESSORS cores of CPU with the given AT_HWCAP and AT_HWCAP2."""
    click.echo(cpuinfo_text(cpu, hwcap, hwcap2, processors), nl=False)


if __name__ == "__main__":
    main()
