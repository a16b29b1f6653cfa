"""This CPU's instruction sets that decide how fast INT8 runs, read from /proc/cpuinfo.

An INT8 convolution is only faster than FP32 where the CPU has an instruction that multiplies and
accumulates 8-bit values in one step: VNNI (AVX-512 or AVX), AMX tiles, or Arm's dot-product (and
i8mm) extensions. Without one, ONNX Runtime widens to 16 bits and INT8 gains little, so benchmarks
and exports record which of these the machine had (docs/QUANTIZATION.md)."""

from __future__ import annotations

from pathlib import Path

# /proc/cpuinfo flag -> the name users know, best INT8 path first.
INT8_ISAS = (
    ("amx_int8", "AMX-INT8"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("i8mm", "Arm i8mm"),
    ("asimddp", "Arm dot-product"),
)
FLAGS = {"avx2", "avx512f", "fma", "asimd", "avx512_bf16", "amx_tile", "amx_bf16", "sve"} | {f for f, _ in INT8_ISAS}


def flags(cpuinfo: str) -> list[str]:
    """The flags of FLAGS that every core listed in a /proc/cpuinfo text has (x86 `flags`, Arm `Features`)."""
    # "key<tabs>: value" lines; a key is compared whole, so a garbled line (no colon, a longer key) is no flags line
    rows = (ln.partition(":") for ln in cpuinfo.splitlines())
    per_core = [set(value.split()) for key, colon, value in rows if colon and key.strip() in ("flags", "Features")]
    common = set.intersection(*per_core) if per_core else set()
    return sorted(common & FLAGS)


def int8_isas(cpu_flags: list[str] | set[str]) -> list[str]:
    """["AVX-512 VNNI", ...]: the 8-bit multiply-accumulate instruction sets among `cpu_flags`, best first."""
    return [name for flag, name in INT8_ISAS if flag in cpu_flags]


def cpu_features(root: Path = Path("/")) -> dict:
    """{"cpu_flags": [...], "int8_isa": [...]} of this machine (`root` lets tests use a fake tree)."""
    try:
        text = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    f = flags(text)
    return {"cpu_flags": f, "int8_isa": int8_isas(f)}
