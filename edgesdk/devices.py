"""Device profiles (devices/NAME.toml), detecting the machine we run on, and checking whether a
bundle will run on a device and why not. Standard library + the bundle; no torch, no TensorRT import
(module presence is looked up, not imported, so `device info` stays fast)."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgesdk.bundle import Bundle
from edgesdk.resources import data_dir
from edgesdk.spec import NAME, TENSORRT_MODULES, DeviceProfile, SpecError

# ONNX op types TensorRT can place on a DLA (TensorRT's "DLA supported layers" list, mapped to ONNX;
# conservative: the builder makes the final call and falls back to the GPU for the rest).
DLA_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Relu",
        "Clip",
        "Sigmoid",
        "Tanh",
        "LeakyRelu",
        "PRelu",
        "BatchNormalization",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Pow",
        "Concat",
        "Resize",
        "Slice",
        "Softmax",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Gemm",
        # free: folded into neighbours or into the engine's constants
        "Constant",
        "Identity",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)


def profile_path(name_or_path: str | os.PathLike) -> Path:
    """The file behind a --device value. A value with a `/` (or the platform's separator) or ending
    in .toml is a path, read as given; anything else is the NAME of a shipped profile and is only
    ever looked up as devices/NAME.toml (a name cannot reach a file outside devices/)."""
    text = os.fspath(name_or_path)
    if "/" in text or os.sep in text or text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(
                f"{text}: device profile file not found (a value with / or .toml is read "
                "as a path; a shipped profile is given by its name, e.g. orin-nx)"
            )
        return path
    folder = data_dir("devices")
    have = sorted(f.stem for f in folder.glob("*.toml"))
    if not NAME.fullmatch(text):
        raise SpecError(
            f"{text!r}: not a device profile name (names are letters, digits, . _ + -; shipped: "
            f"{', '.join(have)}; or give a path to a .toml file)"
        )
    path = folder / f"{text}.toml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{text!r}: no such device profile (shipped: {', '.join(have)}; or give a path to a .toml file)"
        )
    if path.resolve().parent != folder.resolve():
        raise SpecError(f"{text!r}: the shipped profile {path} is a link to {path.resolve()}, outside {folder}")
    return path


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """devices/NAME.toml among the shipped profiles, or a path to a profile of your own (see
    profile_path for which is which)."""
    return DeviceProfile.load(profile_path(name_or_path))


def list_profiles() -> list[DeviceProfile]:
    return [DeviceProfile.load(p) for p in sorted(data_dir("devices").glob("*.toml"))]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def nvidia_gpus() -> list[dict]:
    """[{name, compute_capability, memory_mb, driver}] from nvidia-smi; [] where there is none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(
                {
                    "name": parts[0],
                    "compute_capability": parts[1],
                    "memory_mb": int(parts[2]) if parts[2].isdigit() else None,
                    "driver": parts[3],
                }
            )
    return gpus


def cuda_device(cudart: object, index: int = 0) -> dict:
    """{"name", "compute_capability"} of CUDA device INDEX through cuda-python's runtime module;
    raises RuntimeError when CUDA cannot say."""
    err, prop = cudart.cudaGetDeviceProperties(index)  # type: ignore[attr-defined]
    if int(err) != 0:
        raise RuntimeError(f"CUDA cudaGetDeviceProperties failed: {err}")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def current_gpu() -> dict:
    """{"name", "compute_capability"} of GPU 0, from cuda-python or nvidia-smi; {} where none."""
    try:
        from cuda.bindings import runtime as cudart

        return cuda_device(cudart)
    except Exception:  # no cuda-python, no driver, no GPU: all mean "unknown" here
        pass
    gpus = nvidia_gpus()
    return {"name": gpus[0]["name"], "compute_capability": gpus[0]["compute_capability"]} if gpus else {}


def detect(root: Path = Path("/")) -> dict:
    """Facts about this machine that pick a device profile. `root` lets tests use a fake tree."""
    release = _read(root / "etc/nv_tegra_release")
    m = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    l4t = f"{m.group(1)}.{m.group(2)}" if m else ""
    model = _read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")
    cpuinfo = _read(root / "proc/cpuinfo")
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    cpu_model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith(("model name", "Model"))),
        platform.processor(),
    )
    facts = {
        "machine": platform.machine(),
        "os": platform.platform(),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "fma"}),
        "l4t": l4t,
        "device_model": model,
        "gpus": nvidia_gpus() if root == Path("/") else [],
        "tensorrt_modules": [n for n in TENSORRT_MODULES if importlib.util.find_spec(n)],
    }
    facts["profile"], facts["why"] = match_profile(facts)
    return facts


def match_profile(facts: dict, profiles: list[DeviceProfile] | None = None) -> tuple[str, str]:
    """(profile name, reason) for the facts of `detect()`."""
    profiles = profiles if profiles is not None else list_profiles()
    model = facts.get("device_model", "")
    for p in profiles:
        for sub in p.match_models:
            if sub.lower() in model.lower():
                return p.name, f"device-tree model {model!r} contains {sub!r}"
    if facts.get("l4t"):
        return "", f"a Jetson (L4T {facts['l4t']}, model {model!r}) that no shipped profile matches: write one"
    if any("RTX" in g["name"] or "GeForce" in g["name"] for g in facts.get("gpus", [])):
        return "rtx", f"NVIDIA GPU {facts['gpus'][0]['name']} on {facts.get('machine')}"
    if facts.get("gpus"):
        return "", f"NVIDIA GPU {facts['gpus'][0]['name']}: no shipped profile; use rtx or write one"
    return "cpu", "no NVIDIA GPU found (no /etc/nv_tegra_release, no nvidia-smi)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


def graph_info(bundle: Bundle) -> dict:
    """The manifest's graph summary (opset, op counts); older bundles: read from the ONNX file
    where the onnx package is installed (a device's base install has none)."""
    if bundle.manifest.graph:
        return bundle.manifest.graph
    try:
        return graph_summary(bundle.model_path)
    except ImportError:
        return {}


def graph_summary(onnx_path: str | Path) -> dict:
    """Opset, op-type counts and tensor dtypes of an ONNX file: what device checks (TensorRT opset
    limits, DLA layer support, precision) need, recorded in the manifest so the device needs no onnx."""
    import collections

    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    dtypes = collections.Counter(
        onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer
    )
    return {
        "opset": int(opset),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
        "initializer_dtypes": dict(dtypes),
    }


def check_bundle(
    bundle: Bundle, profile: DeviceProfile, dla_core: int = -1, batch: tuple[int, int, int] | None = None
) -> list[Check]:
    """Will BUNDLE run on PROFILE's device, and how? Each check says why not."""
    m = bundle.manifest
    checks = []
    prec = m.precision
    if prec in profile.gpu_precisions:
        checks.append(Check("precision", "ok", f"{prec} runs on the {profile.kind} of {profile.name}"))
    else:
        checks.append(
            Check(
                "precision",
                "fail",
                f"{prec} is not supported on {profile.name} (supports {', '.join(profile.gpu_precisions)})",
            )
        )
    g = graph_info(bundle)
    opset = int(g.get("opset") or m.provenance.get("opset") or 0)
    if profile.kind == "cpu":
        checks.append(Check("runtime", "ok", "ONNX Runtime on the CPU; no engine to build"))
    elif opset and profile.max_onnx_opset and opset > profile.max_onnx_opset:
        checks.append(
            Check(
                "onnx opset",
                "fail",
                f"graph is opset {opset}; TensorRT {profile.tensorrt_version} on {profile.name} "
                f"parses opsets up to {profile.max_onnx_opset}",
            )
        )
    elif opset:
        checks.append(Check("onnx opset", "ok", f"opset {opset} <= {profile.max_onnx_opset}"))
    if profile.kind != "cpu":
        typed = (
            "strongly typed network (precision from the graph)"
            if profile.strongly_typed
            else "TensorRT < 10: no strongly typed networks; builder flags set from the graph's precision"
        )
        checks.append(Check("network", "ok", typed))
    if dla_core >= 0:
        if dla_core >= profile.dla_cores:
            checks.append(
                Check(
                    "dla", "fail", f"{profile.name} has {profile.dla_cores} DLA cores; core {dla_core} does not exist"
                )
            )
        else:
            if prec not in profile.dla_precisions:
                checks.append(
                    Check(
                        "dla precision",
                        "warn",
                        f"DLA runs {', '.join(profile.dla_precisions)}, "
                        f"not {prec}: every layer falls back to the GPU; export fp16 or int8",
                    )
                )
            ops = g.get("ops", {})
            off = {k: v for k, v in ops.items() if k not in DLA_OPS}
            if off:
                listed = ", ".join(f"{k}×{v}" for k, v in sorted(off.items(), key=lambda kv: -kv[1]))
                checks.append(
                    Check(
                        "dla layers",
                        "warn",
                        f"{sum(off.values())} of {sum(ops.values())} nodes fall back to the GPU: {listed}",
                    )
                )
            elif ops:
                checks.append(Check("dla layers", "ok", "every op type has a DLA implementation"))
            if batch and batch[0] != batch[2]:
                checks.append(Check("dla shapes", "warn", "DLA needs a static batch: use --batch N:N:N"))
    onnx_mb = m.files["model.onnx"].bytes / 1e6
    if profile.memory_gb:
        share = onnx_mb / (profile.memory_gb * 1024)
        checks.append(
            Check(
                "memory",
                "ok" if share < 0.1 else "warn",
                f"weights {onnx_mb:.1f} MB = {share:.1%} of {profile.memory_gb:g} GB shared memory",
            )
        )
    return checks
