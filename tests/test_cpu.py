"""The CPU's INT8 instruction sets: read from /proc/cpuinfo texts of real machines, recorded by bench,
export and `device info`."""

from __future__ import annotations

from pathlib import Path

from edgesdk.bundle import Bundle
from edgesdk.cpu import INT8_ISAS, cpu_features, flags, int8_isas
from edgesdk.devices import detect

# Excerpts of real /proc/cpuinfo texts: an AVX2-only Xeon, an AVX-512 VNNI Xeon, a Jetson Orin (Cortex-A78AE).
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
VNNI = "flags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
ORIN = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp\nModel\t: 0\n"
)


def test_int8_isa_names_the_multiply_accumulate_instructions_best_first():
    assert int8_isas(flags(AVX2)) == []
    assert int8_isas(flags(VNNI)) == ["AMX-INT8", "AVX-512 VNNI"]
    assert int8_isas(flags(ORIN)) == ["Arm dot-product"]
    assert "avx512_bf16" in flags(VNNI) and "bmi2" not in flags(AVX2)


def test_a_flag_one_core_lacks_is_not_claimed():
    mixed = "flags\t: avx2 avx_vnni\nflags\t: avx2\n"
    assert flags(mixed) == ["avx2"] and int8_isas(flags(mixed)) == []


def test_detect_and_cpu_features_read_the_same_tree(tmp_path: Path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(ORIN)
    f = detect(tmp_path)
    assert f["int8_isa"] == ["Arm dot-product"] == cpu_features(tmp_path)["int8_isa"]
    assert cpu_features(tmp_path / "missing") == {"cpu_flags": [], "int8_isa": []}


def test_this_machine_is_read():
    here = cpu_features()
    assert set(here["int8_isa"]) <= {name for _, name in INT8_ISAS}
    assert here["cpu_flags"], "an x86_64 or aarch64 Linux CPU lists at least avx2/fma or asimd"


def test_an_export_records_the_cpu_it_was_gated_on(bundle):
    prov = Bundle.open(bundle).manifest.provenance
    assert prov["int8_isa"] == cpu_features()["int8_isa"] and prov["cpu_flags"] == cpu_features()["cpu_flags"]


def test_an_empty_or_garbled_cpuinfo_claims_nothing_and_does_not_crash(tmp_path: Path):
    assert flags("") == [] and flags("\x00\xff garbage\n:::\n") == []
    # a line that only starts like the key (no colon, another key) is no flags line
    assert flags("flags\nflagsy\t: avx2 fma\nFeatures_x : asimd\n") == []
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_bytes(b"flags\n\xff\xfe: avx2\n")
    assert cpu_features(tmp_path) == {"cpu_flags": [], "int8_isa": []}
