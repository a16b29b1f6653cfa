"""`edgesdk build`: bundle -> TensorRT engine for one device profile. Runs where the engine will run
(a Jetson builds its own engines with JetPack's `tensorrt`); TensorRT for RTX (`tensorrt_rtx`) also
builds ahead of time on a machine without a GPU, which is how the tests build every graph for real.

Output, in BUNDLE/engines/ unless told otherwise:
  NAME.plan        the raw serialized engine (trtexec --loadEngine and DeepStream read it as is)
  NAME.json        sidecar: bundle model.onnx sha256, TensorRT flavour + version, device, GPU,
                   precision, profile shapes, flags, build time (spec.EngineSidecar)
  NAME.nvinfer.txt DeepStream nvinfer config for the engine
  timing-DEVICE-VERSION.cache   TensorRT timing cache, reused by the next build for that device
  .NAME.plan.next  only during a build: the new plan, staged until NAME.json vouches for it (a killed
                   build's one is finished or removed by the next build; see write_plan)
NAME carries model, precision, device, TensorRT version, batch profile and a key hash: a second build
with the same key reuses the plan; any change (bundle, TensorRT, device, profile) builds a new one.
No torch here: this runs on the device."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesdk import __version__
from edgesdk.bundle import Bundle
from edgesdk.devices import current_gpu
from edgesdk.engines import engine_key, engine_name, find_reusable, import_tensorrt, staged_plan, vouched_by
from edgesdk.fsutil import atomic_write_bytes, atomic_write_text, write_json
from edgesdk.spec import NAME, BuildConfig, DeviceProfile, EngineSidecar

log = logging.getLogger("edgesdk.compile")


class TensorRTParseError(RuntimeError):
    """TensorRT's ONNX parser rejected a graph; the message lists the parser's errors."""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def is_strongly_typed(module: str, version: str) -> bool:
    """TensorRT for RTX always; NVIDIA TensorRT from 10 on (8.5 on JetPack 5 has no such networks)."""
    return module == "tensorrt_rtx" or version_tuple(version)[:1] >= (10,)


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps messages (shown when a parse or build fails) instead of printing
    them: on a machine without a GPU, TensorRT for RTX logs a harmless CUDA driver error."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            self.messages.append((name, msg))
            log.debug("TensorRT %s: %s", name, msg)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR") and "cudaError 35" not in m]

    return _Logger()


def parse_onnx(trt: Any, onnx_path: Path, strongly_typed: bool, logger: Any) -> tuple[Any, Any, Any]:
    """(builder, network, parser) for ONNX_PATH, or TensorRTParseError with the parser's own words.
    The parser must outlive the network (it owns the weights)."""
    builder = trt.Builder(logger)
    flag = trt.NetworkDefinitionCreationFlag
    bits = 0
    if strongly_typed:
        bits |= 1 << int(flag.STRONGLY_TYPED)
    elif hasattr(flag, "EXPLICIT_BATCH"):  # TensorRT 8.x needs it for ONNX
        bits |= 1 << int(flag.EXPLICIT_BATCH)
    network = builder.create_network(bits)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node_name = e.node_name() if hasattr(e, "node_name") else ""
            op = e.node_operator() if hasattr(e, "node_operator") else ""
            desc = " ".join(e.desc().split())
            errors.append(f"node {e.node()} {op} {node_name}: {desc}".replace("  ", " "))
        raise TensorRTParseError(
            f"{onnx_path}: TensorRT's ONNX parser ({trt.__name__} {trt.__version__}) "
            "rejected the graph:\n  " + "\n  ".join(errors or logger.errors())
        )
    return builder, network, parser


def check_onnx(onnx_path: str | Path, module: str = "tensorrt_rtx") -> None:
    """Parse ONNX_PATH with TensorRT (strongly typed where the flavour has it); raise if rejected."""
    trt = import_tensorrt(module)
    parse_onnx(trt, Path(onnx_path), is_strongly_typed(module, trt.__version__), make_logger(trt))


class _Progress:
    """TensorRT IProgressMonitor that prints the top-level build phases with their times."""

    @staticmethod
    def make(trt: Any) -> Any:
        class Monitor(trt.IProgressMonitor):
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.t0: dict[str, float] = {}
                self.top: set[str] = set()

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                self.t0[phase_name] = time.perf_counter()
                if parent_phase is None:
                    self.top.add(phase_name)
                    print(f"  TensorRT: {phase_name} …", file=sys.stderr, flush=True)

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # never cancel

            def phase_finish(self, phase_name: str) -> None:
                if phase_name in self.top:
                    dt_s = time.perf_counter() - self.t0.pop(phase_name, time.perf_counter())
                    print(f"  TensorRT: {phase_name} done in {dt_s:.1f} s", file=sys.stderr, flush=True)

        return Monitor()


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    sidecar: EngineSidecar
    reused: bool
    trtexec: str
    deepstream: Path
    timing_cache: Path | None
    notes: tuple[str, ...] = ()

    def row(self) -> dict:
        s = self.sidecar
        return {
            "engine": self.plan.name,
            "MB": s.plan_bytes / 1e6,
            "build s": s.build_seconds,
            "reused": self.reused,
            "TensorRT": f"{s.tensorrt_module} {s.tensorrt_version}",
            "precision": s.precision,
            "typed": "strong" if s.strongly_typed else "flags " + "+".join(s.flags),
            "batch": "{}:{}:{}".format(s.profile["min"][0], s.profile["opt"][0], s.profile["max"][0]),
            "dla": s.dla_core if s.dla_core >= 0 else "-",
        }


def profile_shapes(input_name: str, hw: tuple[int, int], batch: tuple[int, int, int]) -> dict:
    h, w = hw
    return {"input": input_name, **{k: [b, h, w, 3] for k, b in zip(("min", "opt", "max"), batch)}}


def trtexec_command(
    onnx: Path,
    plan: Path,
    shapes: dict,
    module: str,
    strongly_typed: bool,
    flags: tuple[str, ...],
    cfg: BuildConfig,
    timing_cache: Path | None,
) -> str:
    """The equivalent command line for NVIDIA's own tool (trtexec, or tensorrt_rtx for RTX)."""
    exe = "tensorrt_rtx" if module == "tensorrt_rtx" else "/usr/src/tensorrt/bin/trtexec"
    args = [exe, f"--onnx={onnx}", f"--saveEngine={plan}"]
    for k in ("min", "opt", "max"):
        args.append(f"--{k}Shapes={shapes['input']}:{'x'.join(map(str, shapes[k]))}")
    if strongly_typed and module != "tensorrt_rtx":
        args.append("--stronglyTyped")
    args += [f"--{f.lower()}" for f in flags if f in ("FP16", "INT8")]
    args.append(f"--memPoolSize=workspace:{cfg.workspace_mb}M")
    if cfg.dla_core >= 0:
        args.append(f"--useDLACore={cfg.dla_core}")
        if cfg.gpu_fallback:
            args.append("--allowGPUFallback")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


def deepstream_config(bundle: Bundle, plan: Path, side: EngineSidecar) -> str:
    """A DeepStream nvinfer config that runs the engine and attaches its outputs as tensor meta."""
    h, w = bundle.input_size
    mode = {"fp32": 0, "int8": 1, "fp16": 2}.get(side.precision, 0)
    return "\n".join(
        [
            f"# DeepStream nvinfer config for {bundle.path.name} ({side.model}, {side.precision}), "
            "written by edgesdk build.",
            "# Custom network (network-type=100): no built-in parser; the outputs 'score' (batch,) and",
            "# 'anomaly_map' (batch, H, W), in the units of the bundle's threshold, are attached as tensor",
            "# meta (output-tensor-meta=1) for a pad probe to read. Normalization is inside the graph.",
            f"# Threshold: {bundle.threshold:g} ({bundle.manifest.threshold.source}).",
            "# The engine's input is a uint8 NHWC BGR frame; nvinfer's own preprocessing produces float",
            "# tensors, so feed it through nvdspreprocess with a uint8 NHWC tensor (or run edgesdk's runtime).",
            "[property]",
            "gpu-id=0",
            f"onnx-file={bundle.model_path.resolve()}",
            f"model-engine-file={plan.resolve()}",
            f"batch-size={side.profile['opt'][0]}",
            f"network-mode={mode}",
            "network-type=100",
            "output-tensor-meta=1",
            "process-mode=1",
            "gie-unique-id=1",
            "model-color-format=1",
            "network-input-order=1",
            f"infer-dims=3;{h};{w}",
            "net-scale-factor=1.0",
            "maintain-aspect-ratio=0",
            f"output-blob-names={';'.join(o.name for o in bundle.manifest.outputs)}",
            *(["enable-dla=1", f"use-dla-core={side.dla_core}"] if side.dla_core >= 0 else []),
            "",
        ]
    )


def settle_staged(plan: Path, side_path: Path) -> None:
    """Finish or undo what a killed build left beside PLAN (see write_plan): a staged plan that the
    sidecar already vouches for is renamed onto PLAN (killed before its last step); any other one is
    removed (killed before the sidecar was written, so PLAN and the sidecar still agree). A build
    must never stage a new plan over one the sidecar vouches for: the loader would find neither."""
    staged = staged_plan(plan)
    if not (staged.exists() or staged.is_symlink()):
        return
    try:
        side = EngineSidecar.load(EngineSidecar.inside_folder(side_path)) if side_path.is_file() else None
    except ValueError:
        side = None
    if side is not None and vouched_by(staged, side):
        os.replace(staged, plan)
    else:
        staged.unlink()


def write_plan(plan: Path, side_path: Path, side: EngineSidecar, data: bytes | memoryview) -> None:
    """Replace PLAN and its sidecar so that the loader finds a matching pair at every instant, a kill
    included (a rebuilt plan's bytes differ from the old one's): 1. the new plan is staged beside
    PLAN (the old pair, or none, is untouched); 2. the sidecar is replaced: it vouches for the staged
    plan, which the loader takes while PLAN is the old one; 3. the staged plan is renamed onto PLAN.
    Each step is one rename; settle_staged, at the start of the next build, finishes 3 or undoes 1."""
    staged = staged_plan(plan)
    atomic_write_bytes(staged, data)
    write_json(side_path, side.to_dict())
    os.replace(staged, plan)


def build_engine(
    bundle: str | Path | Bundle,
    device: DeviceProfile,
    cfg: BuildConfig = BuildConfig(),
    out: str | Path | None = None,
    progress: bool = False,
    force: bool = False,
) -> BuildResult:
    """Build (or reuse) the engine of BUNDLE for DEVICE. Raises with a clear message when the
    device's TensorRT is missing, the precision or DLA core does not exist there, or TensorRT
    rejects the graph; an interrupted build leaves the previous plan and sidecar, or the new ones,
    matching each other (write_plan)."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    m = b.manifest
    if device.kind == "cpu" or not device.tensorrt_module:
        raise ValueError(f"device {device.name!r} runs bundles in ONNX Runtime: there is no engine to build")
    if m.precision == "int8" and (m.calibration or {}).get("target") == "cpu":
        raise ValueError(
            f"{b.path}: this INT8 bundle was quantized for ONNX Runtime on a CPU (asymmetric uint8 "
            "activations), which TensorRT's explicit quantization does not take; export it with "
            "--precision int8 --target tensorrt"
        )
    if m.precision not in device.gpu_precisions:
        raise ValueError(
            f"{b.path}: precision {m.precision} is not supported on {device.name} "
            f"(supports {', '.join(device.gpu_precisions)})"
        )
    if cfg.dla_core >= device.dla_cores:
        raise ValueError(f"--dla {cfg.dla_core}: {device.name} has {device.dla_cores} DLA cores")
    trt = import_tensorrt(device.tensorrt_module, device.name)
    module, version = device.tensorrt_module, trt.__version__
    notes = []
    if device.tensorrt_version and version_tuple(version)[:2] != version_tuple(device.tensorrt_version)[:2]:
        notes.append(
            f"profile {device.name} expects TensorRT {device.tensorrt_version}; building with "
            f"{version}: the engine is for the TensorRT that runs it"
        )
    strongly = is_strongly_typed(module, version)
    gpu = current_gpu()
    out_dir = Path(out) if out is not None else b.path / "engines"
    key = engine_key(b.onnx_sha256, m.precision, module, version, device.name, gpu, cfg)
    name = engine_name(m.model["name"], m.precision, device.name, module, version, cfg, key)
    if not NAME.fullmatch(name):  # the model and device names are parts of a file name in OUT
        raise ValueError(
            f"{b.path}: engine name {name!r} (model {m.model['name']!r}, device {device.name!r}) "
            "is not a plain file name"
        )
    plan = out_dir / f"{name}.plan"
    side_path = EngineSidecar.path_for(plan)
    ds_path = out_dir / f"{name}.nvinfer.txt"
    shapes = profile_shapes(m.input.name, b.input_size, cfg.batch)
    cache = out_dir / f"timing-{device.name}-{version}.cache" if module == "tensorrt" and cfg.timing_cache else None
    if module == "tensorrt_rtx":
        notes.append("TensorRT for RTX keeps no timing cache (its timing-cache calls are no-ops)")
    flags: tuple[str, ...]

    settle_staged(plan, side_path)  # before reuse is judged or a new plan is staged
    side = None if force else find_reusable(plan, key)
    if side is not None:
        reused = True
        flags = side.flags
    else:
        reused = False
        logger = make_logger(trt)
        builder, network, _parser = parse_onnx(trt, b.model_path, strongly, logger)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = cfg.optimization_level
        fl = []
        if not strongly:
            # TensorRT 8.5: the graph's precision becomes builder flags (Q/DQ graphs need INT8).
            if m.precision in ("fp16", "int8"):
                fl.append("FP16")
            if m.precision == "int8":
                fl.append("INT8")
        if cfg.dla_core >= 0:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = cfg.dla_core
            if cfg.gpu_fallback:
                fl.append("GPU_FALLBACK")
        for f in fl:
            config.set_flag(getattr(trt.BuilderFlag, f))
        flags = tuple(fl)
        if module == "tensorrt_rtx" and device.compute_capability:
            cc = getattr(trt.ComputeCapability, "SM" + device.compute_capability.replace(".", ""), None)
            if cc is None:
                known = [k for k in dir(trt.ComputeCapability) if k.startswith("SM")]
                raise ValueError(
                    f"device {device.name!r}: compute_capability {device.compute_capability} is not "
                    f"a target of {module} {version} (it builds for {', '.join(known)})"
                )
            config.num_compute_capabilities = 1
            config.set_compute_capability(cc, 0)
        profile = builder.create_optimization_profile()
        profile.set_shape(shapes["input"], shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        if cache is not None:
            if cache.is_file():
                EngineSidecar.inside_folder(cache)  # a link out of the folder is not read as a cache
            tc = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
            config.set_timing_cache(tc, False)
        if progress and hasattr(config, "progress_monitor"):
            config.progress_monitor = _Progress.make(trt)
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            raise RuntimeError(
                f"{b.model_path}: TensorRT {version} could not build an engine for {device.name}:\n  "
                + "\n  ".join(logger.errors() or ["(no error logged)"])
            )
        data = memoryview(serialized)
        digest = hashlib.sha256(data).hexdigest()
        side = EngineSidecar(
            plan=plan.name,
            plan_sha256=digest,
            plan_bytes=data.nbytes,
            key=key,
            onnx_sha256=b.onnx_sha256,
            model=m.model["name"],
            precision=m.precision,
            tensorrt_module=module,
            tensorrt_version=version,
            device=device.name,
            gpu=gpu,
            strongly_typed=strongly,
            flags=flags,
            profile=shapes,
            dla_core=cfg.dla_core,
            workspace_mb=cfg.workspace_mb,
            build_seconds=round(seconds, 3),
            bundle=str(b.path.resolve()),
            edgesdk_version=__version__,
            created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        write_plan(plan, side_path, side, data)
        if cache is not None:
            atomic_write_bytes(cache, memoryview(config.get_timing_cache().serialize()))
    atomic_write_text(ds_path, deepstream_config(b, plan, side))
    cmd = trtexec_command(b.model_path, plan, shapes, module, strongly, flags, cfg, cache)
    return BuildResult(plan, side, reused, cmd, ds_path, cache, tuple(notes))
