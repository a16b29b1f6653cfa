"""The install's steps that write and check a slot (slots.py runs them in order; its docstring lists
every step): extract, fsync and rename the package into SLOT, build and check its runtime, adopt or
build its TensorRT engine, run the health check. EDGESDK_FAULT_AT=<step> (a test hook) kills the
process with SIGKILL as that step begins."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

from edgesdk.deploy import health, keys, runtime
from edgesdk.deploy.archive import Limits
from edgesdk.deploy.layout import SLOTS, InstallError, fsync_dir, verify_slot
from edgesdk.deploy.manifest import META, SIG, PackageManifest
from edgesdk.deploy.package import Verified, read_package
from edgesdk.engines import vouched_by
from edgesdk.fsutil import temp_beside
from edgesdk.spec import EngineSidecar

if TYPE_CHECKING:
    from edgesdk.deploy.slots import InstallOptions

STEPS = (
    "verify",
    "lock",
    "extract",
    "fsync",
    "rename",
    "runtime",
    "engine",
    "health",
    "previous",
    "current",
    "history",
    "gc",
)
FAULT_ENV = "EDGESDK_FAULT_AT"


def fault(step: str) -> None:
    """Test hook: EDGESDK_FAULT_AT=STEP kills this process (SIGKILL, no cleanup) as STEP begins."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _writer(dest: Path):
    def sink(name: str) -> IO[bytes]:
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        return os.fdopen(fd, "wb")

    return sink


def _fsync_tree(top: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(top, topdown=False):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            n += 1
        fsync_dir(Path(dirpath))
    return n


def _place(src: Path, dst: Path) -> None:
    """SRC at DST in one step: a hard link where the filesystem has them, else a whole copy, either
    made under a temporary name and renamed over DST."""
    with temp_beside(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
            with open(tmp, "rb+") as f:  # the copy's blocks on disk before its name is the plan's
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    fsync_dir(dst.parent)


def _engine(slot: Path, m: PackageManifest, device: str, staged: bool) -> tuple[str, str | None, str]:
    """(backend, plan, what happened) for this device: a packaged plan whose sidecar matches this
    device and its TensorRT, else one built here, else ONNX Runtime."""
    if staged:
        return "onnxruntime", None, "none: staged (the target adopts or builds its engine when it installs)"
    from edgesdk.devices import current_gpu, load_profile

    prof = load_profile(device) if device else None
    if prof is None or prof.kind == "cpu" or not prof.tensorrt_module:
        return "onnxruntime", None, f"none: {device or 'this device'} runs ONNX Runtime"
    if importlib.util.find_spec(prof.tensorrt_module) is None:
        return "onnxruntime", None, f"none: {prof.tensorrt_module} is not installed here; ONNX Runtime"
    from edgesdk.compile.trt import build_engine, import_tensorrt

    trt = import_tensorrt(prof.tensorrt_module, prof.name)
    gpu = current_gpu()
    out = slot / "bundle" / "engines"
    why = []
    for e in m.engines:
        side = EngineSidecar.load(slot / e["sidecar"])
        diff = (
            [f"built for {side.device}"]
            if side.device != prof.name
            else side.mismatches(m.model["onnx_sha256"], prof.tensorrt_module, trt.__version__, gpu)
        )
        if diff:
            why.append(f"{Path(e['plan']).name}: {'; '.join(diff)}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        plan = out / Path(e["plan"]).name
        for src, dst in ((slot / e["plan"], plan), (slot / e["sidecar"], out / Path(e["sidecar"]).name)):
            # a copy cut short by a crash is not taken for the plan: checked against the sidecar, redone
            if not (vouched_by(dst, side) if dst == plan else dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
                _place(src, dst)
        return "tensorrt", str(out / Path(e["plan"]).name), f"adopted packaged {Path(e['plan']).name}"
    from edgesdk.bundle import Bundle

    res = build_engine(Bundle.open(slot / "bundle", verify=False), prof, out=out)
    skipped = f" (packaged plans unfit: {'; '.join(why)})" if why else ""
    return "tensorrt", str(res.plan), f"built {res.plan.name} in {res.sidecar.build_seconds:.0f} s{skipped}"


def extract(package: Path, pub: keys.PublicKey, v: Verified, slot: Path, limits: Limits, step) -> None:
    """Steps extract, fsync, rename: SLOT holds the package, durable, or (reused) already did."""
    fault("extract")
    if slot.is_dir() and not verify_slot(slot, pub):
        step("extract", "ok", f"{slot.name} already holds this package and verifies: reused")
        return
    if slot.exists():
        shutil.rmtree(slot)  # not current (checked by the caller); damaged or partial
    incoming = Path(tempfile.mkdtemp(dir=slot.parent, prefix=".incoming-"))
    try:
        again = read_package(package, pub, limits, sink=_writer(incoming))
        if again.manifest_bytes != v.manifest_bytes:
            raise InstallError(f"{package}: changed while it was being installed; refused")
        for member, data in ((META, v.manifest_bytes), (SIG, v.signature)):
            with _writer(incoming)(member) as f:
                f.write(data)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    step("extract", "ok", f"{len(v.manifest.members)} members into {SLOTS}/{incoming.name}, each re-checked")
    fault("fsync")
    step("fsync", "ok", f"{_fsync_tree(incoming)} files durable")
    fault("rename")
    os.chmod(incoming, 0o755)
    os.rename(incoming, slot)
    fsync_dir(slot.parent)
    step("rename", "ok", f"{SLOTS}/{slot.name}")


def runtime_check(slot: Path, m: PackageManifest, python: str | None, opts: InstallOptions, step) -> list[dict]:
    """Step runtime: the packaged runtime's venv, built and checked here; its health check row ([] when
    not run here)."""
    fault("runtime")
    if not m.runtime:
        step("runtime", "-", "the package carries no runtime")
    elif opts.staged:
        step(
            "runtime",
            "-",
            f"{len(m.runtime['wheels'])} wheels extracted, not run here: the target builds "
            f"runtime/venv at first boot ({' '.join(runtime.bootstrap_command())})",
        )
    elif python is None:
        step("runtime", "skipped", f"--no-runtime: the model only; {runtime.BOOTSTRAP} builds the venv later")
    else:
        row = runtime.install_runtime(slot, m, python)
        step("runtime", "ok" if row["passed"] else "FAILED", row["detail"])
        return [row]
    return []


def engine_and_health(
    slot: Path, m: PackageManifest, device: str, opts: InstallOptions, step, before: list[dict]
) -> dict:
    """Steps engine, health: the health report (BEFORE's check rows first), written to SLOT/health.json."""
    fault("engine")
    if not all(c["passed"] for c in before):
        backend, plan, what = "", None, ""
        step("engine", "-", f"not run: the {runtime.CHECK} failed")
    else:
        try:
            backend, plan, what = _engine(slot, m, device, opts.staged)
            step("engine", "ok", what)
        except Exception as e:  # a device that cannot build or adopt an engine fails this install
            backend, plan, what = "", None, f"{type(e).__name__}: {e}"
            step("engine", "FAILED", what)
    fault("health")
    if backend:
        hopts = health.HealthOptions(
            golden=opts.golden, max_latency_ms=opts.max_latency_ms, backend=backend, engine=plan, staged=opts.staged
        )
        report = health.check(slot, m, hopts)
        report["checks"][:0] = before
        report = health.finish(report)
    else:
        failed = [{"check": "engine", "passed": False, "detail": what}] if what else []
        report = health.finish(
            {"mode": "staged" if opts.staged else "device", "backend": None, "checks": before + failed}
        )
    health.write(slot, report)
    step(
        "health",
        "ok" if report["passed"] else "FAILED",
        "; ".join(f"{c['check']} {'ok' if c['passed'] else 'FAILED'}" for c in report["checks"])
        if report["passed"]
        else report["why"],
    )
    return report
