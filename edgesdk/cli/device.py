"""`edgesdk device list | info | check`, `build`, `verify`: device profiles, TensorRT engines for them,
and an engine checked against ONNX Runtime. No torch: these run on the device."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgesdk.cli._common import batch, count, dla, emit, progress_on, table


def _workspace(text: str) -> int:
    from edgesdk.spec import MAX_WORKSPACE_MB

    try:
        mb = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workspace {text!r}: expected megabytes, e.g. 1024") from None
    if not 0 < mb <= MAX_WORKSPACE_MB:
        raise argparse.ArgumentTypeError(f"--workspace {text!r}: need 1 <= MB <= {MAX_WORKSPACE_MB}")
    return mb


def _tolerance(text: str) -> float:
    from edgesdk.errors import finite

    try:
        tol = finite(text, "--tolerance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if tol < 0:  # inf would pass every engine, nan none
        raise argparse.ArgumentTypeError(f"--tolerance {text!r}: a score difference >= 0, e.g. 0.05")
    return tol


def _fact(v):
    """A detect() value as one cell: lists joined, GPUs as `name cc X.Y`."""
    if not isinstance(v, list):
        return v
    if v and isinstance(v[0], dict):
        return "; ".join(g["name"] + " cc " + g["compute_capability"] for g in v)
    return ", ".join(map(str, v))


def cmd_device(args) -> None:
    from edgesdk import devices

    if args.device_cmd == "list":
        rows = [
            {
                "profile": p.name,
                "description": p.description,
                "TensorRT": f"{p.tensorrt_module} {p.tensorrt_version}".strip(),
                "JetPack": p.jetpack,
                "CC": p.compute_capability,
                "DLA": p.dla_cores,
                "precisions": ",".join(p.gpu_precisions),
                "camera": p.camera,
            }
            for p in devices.list_profiles()
        ]
        emit(args, {"profiles": rows}, table(rows, title="device profiles (devices/*.toml)"))
    elif args.device_cmd == "info":
        f = devices.detect()
        rows = [{"fact": k, "value": _fact(v)} for k, v in f.items()]
        emit(args, f, table(rows, title="this machine"))
    else:
        from edgesdk.bundle import Bundle

        prof = devices.load_profile(args.device)
        checks = devices.check_bundle(Bundle.open(args.bundle), prof, args.dla, args.batch)
        runs = not any(c.status == "fail" for c in checks)
        rows = [{"check": c.name, "status": c.status.upper(), "detail": c.detail} for c in checks]
        text = (
            table(rows, title=f"{args.bundle} on {prof.name}")
            + f"\n{'will run' if runs else 'will NOT run'} on {prof.name}"
        )
        emit(args, {"device": prof.name, "runs": runs, "checks": [vars(c) for c in checks]}, text)
        if not runs:
            raise SystemExit(1)


def cmd_build(args) -> None:
    from edgesdk.compile.trt import build_engine
    from edgesdk.devices import load_profile
    from edgesdk.progress import say
    from edgesdk.spec import BuildConfig, EngineSidecar

    device = load_profile(args.device)
    cfg = BuildConfig(
        batch=(1, args.max_batch, args.max_batch) if args.max_batch else args.batch,
        workspace_mb=args.workspace,
        dla_core=args.dla,
        timing_cache=not args.no_timing_cache,
    )
    if progress_on(args):
        say(f"building {args.bundle} for {device.name} ({device.description}) with {device.tensorrt_module}")
    r = build_engine(args.bundle, device, cfg, out=args.out, progress=progress_on(args), force=args.force)
    text = table([r.row()], title=f"engine for {device.name}") + "\n"
    text += (
        "reused: same bundle, TensorRT, device and profile as the existing plan (--force rebuilds)\n"
        if r.reused
        else ""
    )
    text += "".join(f"note: {n}\n" for n in r.notes)
    text += f"plan     {r.plan}\nsidecar  {EngineSidecar.path_for(r.plan)}\nnvinfer  {r.deepstream}\n"
    if r.timing_cache:
        text += f"timing cache {r.timing_cache}\n"
    text += f"trtexec equivalent:\n  {r.trtexec}"
    emit(
        args,
        {
            "plan": str(r.plan),
            "reused": r.reused,
            "sidecar": r.sidecar.to_dict(),
            "trtexec": r.trtexec,
            "deepstream": str(r.deepstream),
            "notes": list(r.notes),
        },
        text,
    )


def cmd_verify(args) -> None:
    from edgesdk.measure.compare import verify_engine

    r = verify_engine(args.engine, args.bundle, args.tolerance)
    text = table(
        [
            {
                "frames": r["n_frames"],
                "score max |diff|": r["score_max_abs_err"],
                "map max |diff|": r["map_max_abs_err"],
                "verdict flips": r["verdict_flips"],
                "tolerance": r["tolerance"],
                "result": "PASS" if r["passed"] else "FAIL",
            }
        ],
        title=f"{Path(args.engine).name} vs ONNX Runtime (CPU) on the bundle's parity frames",
    )
    emit(args, r, text)
    if not r["passed"]:
        raise SystemExit(1)


def add_commands(sub) -> None:
    s = sub.add_parser("build", help="bundle -> TensorRT engine for a device profile (raw plan + sidecar)")
    s.add_argument("bundle")
    s.add_argument(
        "--device",
        required=True,
        help="profile name in devices/ (orin-nx, rtx, ...) or a path to your "
        "own profile (a value with / or ending in .toml is a path)",
    )
    s.add_argument("--out", help="engine folder (default BUNDLE/engines)")
    sizes = s.add_mutually_exclusive_group()
    sizes.add_argument(
        "--batch", type=batch, default=(1, 1, 4), help="optimization profile MIN:OPT:MAX (default 1:1:4)"
    )
    sizes.add_argument(
        "--max-batch",
        type=count,
        help="a run of N cameras (`run --source` N times) sends N frames a call: profile 1:N:N, tuned for N",
    )
    s.add_argument("--workspace", type=_workspace, default=1024, help="builder workspace, MB")
    s.add_argument("--dla", type=dla, default=-1, help="DLA core (Jetson Orin/Xavier); layers it lacks run on the GPU")
    s.add_argument("--force", action="store_true", help="rebuild even if a matching plan exists")
    s.add_argument("--no-timing-cache", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser("verify", help="run an engine on the bundle's parity frames and compare with ONNX Runtime")
    s.add_argument("engine")
    s.add_argument("--bundle", required=True)
    s.add_argument("--tolerance", type=_tolerance, help="max score difference (default 0.05 fp32, 0.25 fp16/int8)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_verify)

    dev = sub.add_parser("device", help="device profiles, this machine, will a bundle run there")
    dsub = dev.add_subparsers(dest="device_cmd", required=True)
    s = dsub.add_parser("list", help="shipped device profiles")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)
    s = dsub.add_parser("info", help="detect this machine and the profile that matches")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)
    s = dsub.add_parser("check", help="will BUNDLE run on --device, and why not")
    s.add_argument("bundle")
    s.add_argument("--device", required=True, help="profile name in devices/ or a path to a .toml (as for build)")
    s.add_argument("--dla", type=dla, default=-1)
    s.add_argument("--batch", type=batch, default=(1, 1, 4))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_device)
