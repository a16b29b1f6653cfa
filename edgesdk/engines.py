"""The engine cache, shared by the builder (compile/trt.py) and the runner (backends/tensorrt.py):
the one import of TensorRT, the cache key and plan name, finding the plan built for a bundle on this
TensorRT and GPU, and the check of a plan's bytes against its sidecar. The sidecar itself (what a
plan was built from and for, and how that differs from what is running) is spec.EngineSidecar.

BUNDLE/engines/NAME.plan + NAME.json; NAME carries model, precision, device, TensorRT version,
batch profile and the key (a hash of everything that changes the engine). No torch, no GPU needed."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesdk.spec import TENSORRT_MODULES, BuildConfig, EngineSidecar, SpecError, sha256_file

if TYPE_CHECKING:
    from edgesdk.bundle import Bundle

WHERE_TO_BUILD = {
    "tensorrt": (
        "A Jetson builds its own engines (or one of the same module and JetPack): on it, JetPack's "
        "TensorRT Python module comes with `sudo apt install python3-libnvinfer` (part of "
        "nvidia-jetpack); run `edgesdk build` there"
    ),
    "tensorrt_rtx": "pip install 'edgesdk[tensorrt-rtx]' (tensorrt-rtx-cu12); its builder runs without a GPU too",
}


class TensorRTUnavailable(RuntimeError):
    """The TensorRT flavour a device needs is not installed here."""


class EngineError(RuntimeError):
    """A plan is missing, corrupt, or was built for another bundle, TensorRT or GPU."""


def import_tensorrt(module: str, device: str = "") -> Any:
    """The TensorRT module MODULE ("tensorrt" or "tensorrt_rtx"), the one place edgesdk imports
    TensorRT: a name read from a device profile or an engine sidecar never picks other code to run."""
    who = f"device {device!r} needs" if device else "this needs"
    if module not in TENSORRT_MODULES:
        raise TensorRTUnavailable(
            f"{who} tensorrt_module {module!r}, which is not one of "
            f"{', '.join(TENSORRT_MODULES)}; refusing to import it"
        )
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise TensorRTUnavailable(
            f"{who} the Python module {module!r}, which is not installed here ({e}). {WHERE_TO_BUILD.get(module, '')}"
        ) from None
    if not hasattr(mod, "Builder"):  # e.g. a folder of type stubs on sys.path, not TensorRT itself
        raise TensorRTUnavailable(
            f"{who} TensorRT's module {module!r}, but {getattr(mod, '__path__', mod)} "
            f"is not TensorRT (no Builder). {WHERE_TO_BUILD.get(module, '')}"
        )
    return mod


def installed_tensorrt(bundle: Bundle) -> Any:
    """The TensorRT flavour installed here (JetPack's first), to pick an engine for it."""
    for name in TENSORRT_MODULES:
        try:
            return import_tensorrt(name)
        except TensorRTUnavailable:
            continue
    raise EngineError(
        f"{bundle.path}: --backend tensorrt needs TensorRT's Python module (JetPack's "
        "python3-libnvinfer on a Jetson, tensorrt-rtx-cu12 on an RTX PC); none is installed"
    )


def engine_key(
    onnx_sha256: str, precision: str, module: str, version: str, device: str, gpu: dict, cfg: BuildConfig
) -> str:
    """Hash of everything that changes the engine; equal keys mean the plan can be reused."""
    blob = json.dumps(
        [
            onnx_sha256,
            precision,
            module,
            version,
            device,
            gpu.get("compute_capability", ""),
            list(cfg.batch),
            cfg.dla_core,
            cfg.gpu_fallback,
            cfg.workspace_mb,
            cfg.optimization_level,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def engine_name(model: str, precision: str, device: str, module: str, version: str, cfg: BuildConfig, key: str) -> str:
    flavour = "trtrtx" if module == "tensorrt_rtx" else "trt"
    dla = f"-dla{cfg.dla_core}" if cfg.dla_core >= 0 else ""
    return f"{model}-{precision}-{device}-{flavour}{version}-b{'x'.join(map(str, cfg.batch))}{dla}-{key}"


def staged_plan(plan: str | Path) -> Path:
    """Where `edgesdk build` stages a new NAME.plan: .NAME.plan.next beside it (hidden, and no *.plan
    glob lists it). The build writes it, then NAME.json for it, then renames it onto NAME.plan."""
    plan = Path(plan)
    return plan.with_name(f".{plan.name}.next")


def vouched_by(path: Path, side: EngineSidecar) -> bool:
    """PATH is a file in its own folder with the size and sha256 that SIDE names."""
    try:
        EngineSidecar.inside_folder(path)
        return path.is_file() and path.stat().st_size == side.plan_bytes and sha256_file(path) == side.plan_sha256
    except (SpecError, OSError):  # a link out of the folder; renamed away while we looked
        return False


def load_plan_sidecar(plan: str | Path) -> EngineSidecar:
    """The sidecar of PLAN, every field checked, after checking the plan's size and sha256 against
    it. Plan and sidecar must be files in one folder (no links leading out of it). A rebuild killed
    between writing NAME.json and renaming its staged plan onto NAME.plan leaves the plan the
    sidecar vouches for in staged_plan(PLAN): that one is accepted (and read by the runner), never
    renamed here; the next build finishes the rename."""
    plan = Path(plan)
    if not plan.is_file():
        raise EngineError(f"{plan}: engine plan not found")
    try:
        EngineSidecar.inside_folder(plan)
        side_path = EngineSidecar.path_for(plan)
        if side_path.exists():
            EngineSidecar.inside_folder(side_path)
        side = EngineSidecar.load(side_path)
    except ValueError as e:  # SpecError, or any other refusal of the sidecar's contents
        raise EngineError(str(e)) from None
    # PLAN again last: a build's final rename may land between the first two looks.
    if not any(vouched_by(p, side) for p in (plan, staged_plan(plan), plan)):
        size = plan.stat().st_size
        raise EngineError(
            f"{plan}: {size} bytes / sha256 differ from its sidecar "
            f"({side.plan_bytes} bytes): truncated, corrupt or replaced; rebuild with `edgesdk build`"
        )
    return side


def read_plan(plan: str | Path, side: EngineSidecar) -> bytes:
    """The plan bytes SIDE vouches for (PLAN's, or its staged plan's, as in load_plan_sidecar), read
    once and checked in memory: what TensorRT deserializes is what was checked, even if a build
    replaces the files meanwhile."""
    plan = Path(plan)
    for p in (plan, staged_plan(plan), plan):
        try:
            data = EngineSidecar.inside_folder(p).read_bytes()
        except (SpecError, OSError):
            continue
        if len(data) == side.plan_bytes and hashlib.sha256(data).hexdigest() == side.plan_sha256:
            return data
    raise EngineError(
        f"{plan}: no longer the plan its sidecar vouched for when it was opened (rebuilt meanwhile?); open it again"
    )


def batch_problem(side: EngineSidecar, batch: int) -> str:
    """Why a plan built as SIDE cannot take BATCH frames in one call (its optimization profile's max
    batch is smaller: a run of BATCH cameras), or "" when it can."""
    p = side.profile
    if batch <= int(p["max"][0]):
        return ""
    return (
        f"its optimization profile takes batches {p['min'][0]}:{p['opt'][0]}:{p['max'][0]} (min:opt:max), "
        f"this run sends up to {batch} frames a call (one per source); build one with "
        f"`edgesdk build BUNDLE --device PROFILE --max-batch {batch}`"
    )


def find_engine(
    bundle: Bundle,
    folder: str | Path | None = None,
    module: str | None = None,
    version: str | None = None,
    gpu: dict | None = None,
    batch: int = 1,
) -> Path:
    """The plan in FOLDER (default BUNDLE/engines) built from this bundle for the running TensorRT
    and GPU, whose profile takes BATCH frames a call; otherwise EngineError listing each plan found
    and why it does not fit."""
    folder = Path(folder) if folder is not None else bundle.path / "engines"
    plans = sorted(folder.glob("*.plan")) if folder.is_dir() else []
    why = []
    for plan in plans:
        try:
            side = load_plan_sidecar(plan)
        except EngineError as e:
            why.append(str(e))
            continue
        diff = side.mismatches(bundle.onnx_sha256, module, version, gpu)
        if too_small := batch_problem(side, batch):
            diff.append(too_small)
        if not diff:
            return plan
        why.append(f"{plan.name}: " + "; ".join(diff))
    hint = f"build one there with `edgesdk build {bundle.path} --device PROFILE`"
    raise EngineError(
        f"{folder}: no engine for this bundle and this TensorRT/GPU"
        + (":\n  " + "\n  ".join(why) if why else " (no .plan files)")
        + f"\n{hint}"
    )


def find_reusable(plan: Path, key: str) -> EngineSidecar | None:
    """The sidecar of an existing plan with the same key whose bytes are intact, else None (a link
    leading out of the folder is never reused: the build replaces the link, not what it points to)."""
    side_path = EngineSidecar.path_for(plan)
    if not (plan.is_file() and side_path.is_file()):
        return None
    try:
        side = EngineSidecar.load(EngineSidecar.inside_folder(side_path))
        EngineSidecar.inside_folder(plan)
    except ValueError:
        return None
    if side.key != key or plan.stat().st_size != side.plan_bytes or sha256_file(plan) != side.plan_sha256:
        return None
    return side
