"""Install, roll back and report model slots under a root folder (layout.py holds the root's layout;
docs/DEPLOY.md the whole story).

install is one state machine; each step is named, and EDGESDK_FAULT_AT=<step> (a test hook) kills the
process with SIGKILL as that step begins:
  verify   read the whole package once: signature, every member (no writes; refusals end here)
  lock     create ROOT, take an exclusive flock on it, remove leftovers of interrupted runs
  extract  read the package again into slots/.incoming-XXXX, re-checking every member as it is written
  fsync    fsync every file and folder of the incoming slot
  rename   rename it to slots/<version>-<sha12>; fsync slots/
  runtime  a package with a runtime: build SLOT/runtime/venv from its wheels at its final path
           (runtime/bootstrap.py, offline) and have that venv's edgesdk score the parity frames; a failure
           fails the install like a health check (staged, or --no-runtime: not run here)
  engine   adopt a packaged TensorRT plan that matches this device, or build one (TensorRT devices)
  health   run the health check; write health.json (a failure ends here: the slot stays, marked failed)
  previous point `previous` at the slot `current` points at
  current  point `current` at the new slot
  history  append to history.jsonl
  gc       remove old slots beyond --keep (never current or previous)
At every point `current` names a complete, verified slot: the new slot only becomes `current` by one
rename of a symlink, after it is durable and healthy."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from edgesdk import __version__
from edgesdk.deploy import health, keys, runtime
from edgesdk.deploy.archive import Limits
from edgesdk.deploy.layout import (
    CURRENT,
    HISTORY,
    PREVIOUS,
    PUBKEY,
    SLOTS,
    InstallError,
    append_history,
    clean_leftovers,
    fsync_dir,
    gc,
    link_target,
    locked,
    point,
    slot_manifest,
    verify_slot,
)
from edgesdk.deploy.manifest import META, SIG, PackageManifest, check_min_edgesdk, version_key
from edgesdk.deploy.package import Verified, golden_files, read_package
from edgesdk.errors import EdgesdkError, finite
from edgesdk.fsutil import atomic_write_text
from edgesdk.spec import EngineSidecar

STEPS = ("verify", "lock", "extract", "fsync", "rename", "runtime", "engine", "health", "previous", "current",
         "history", "gc")
FAULT_ENV = "EDGESDK_FAULT_AT"


def fault(step: str) -> None:
    """Test hook: EDGESDK_FAULT_AT=STEP kills this process (SIGKILL, no cleanup) as STEP begins."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class InstallOptions:
    golden: str | None = None           # golden folder that replaces the packaged one
    allow_downgrade: bool = False       # install an older version, or another package of the same version
    max_latency_ms: float | None = None
    keep: int = 3                       # slots kept by gc, current and previous included
    device: str | None = None           # device profile name; None: detect this machine
    staged: bool = False                # edgesdk stage: a root filesystem for another machine
    runtime: bool = True                # build a packed runtime's venv (False: --no-runtime, the model only)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Report:
    status: str                         # "installed", "current" (already; nothing done) or "failed"
    package: str
    version: str
    slot: str
    device: str
    previous: str | None = None
    steps: list[dict] = field(default_factory=list)
    health: dict | None = None
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict:
        return asdict(self)


# -- install ---------------------------------------------------------------------------------------
def target_device(m: PackageManifest, opts: InstallOptions, where: str) -> str:
    """The device profile this install is for; refuses a package not built for it."""
    from edgesdk.devices import detect, load_profile

    if opts.device:
        name, why = load_profile(opts.device).name, "--device"
    elif opts.staged:
        name, why = "", "no --device given for the staged target"
    else:
        facts = detect()
        name, why = facts["profile"], facts["why"]
    if m.devices and name not in m.devices:
        raise InstallError(f"{where}: built for {', '.join(m.devices)}; this device is "
                           f"{name or 'unknown'} ({why}). Install a package built for it "
                           "(or give --device NAME when staging)")
    return name


def decide(v: Verified, current: Path | None, opts: InstallOptions) -> str:
    """"install", or "same" when the package is already current; refuses a downgrade."""
    try:
        cur = slot_manifest(current) if current is not None else None
    except (OSError, EdgesdkError):
        cur = None          # a damaged current slot must not block the install that replaces it
    if cur is None or current is None:
        return "install"
    new_key, cur_key = version_key(v.manifest.version), version_key(cur.version)
    same_pkg = (current / META).read_bytes() == v.manifest_bytes
    if same_pkg:
        return "same"
    if opts.allow_downgrade:
        return "install"
    if new_key < cur_key:
        raise InstallError(f"{v.path}: version {v.manifest.version} is older than the active {cur.version} "
                           f"({current.name}); refused (--allow-downgrade installs it anyway)")
    if new_key == cur_key:
        raise InstallError(f"{v.path}: version {v.manifest.version} is already active as another package "
                           f"({current.name}); a version names one package: give this one a new version "
                           "(or --allow-downgrade)")
    return "install"


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
        diff = [f"built for {side.device}"] if side.device != prof.name else \
            side.mismatches(m.model["onnx_sha256"], prof.tensorrt_module, trt.__version__, gpu)
        if diff:
            why.append(f"{Path(e['plan']).name}: {'; '.join(diff)}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        for src in (slot / e["plan"], slot / e["sidecar"]):
            dst = out / src.name
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        return "tensorrt", str(out / Path(e["plan"]).name), f"adopted packaged {Path(e['plan']).name}"
    from edgesdk.bundle import Bundle

    res = build_engine(Bundle.open(slot / "bundle", verify=False), prof, out=out)
    skipped = f" (packaged plans unfit: {'; '.join(why)})" if why else ""
    return "tensorrt", str(res.plan), f"built {res.plan.name} in {res.sidecar.build_seconds:.0f} s{skipped}"


def _extract(package: Path, pub: keys.PublicKey, v: Verified, slot: Path, limits: Limits, step) -> None:
    """Steps extract, fsync, rename: SLOT holds the package, durable, or (reused) already did."""
    fault("extract")
    if slot.is_dir() and not verify_slot(slot, pub):
        step("extract", "ok", f"{slot.name} already holds this package and verifies: reused")
        return
    if slot.exists():
        shutil.rmtree(slot)                    # not current (checked by the caller); damaged or partial
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


def _runtime(slot: Path, m: PackageManifest, python: str | None, opts: InstallOptions, step) -> list[dict]:
    """Step runtime: the packaged runtime's venv, built and checked here; its health check row ([] when
    not run here)."""
    fault("runtime")
    if not m.runtime:
        step("runtime", "-", "the package carries no runtime")
    elif opts.staged:
        step("runtime", "-", f"{len(m.runtime['wheels'])} wheels extracted, not run here: the target builds "
                             f"runtime/venv at first boot ({' '.join(runtime.bootstrap_command())})")
    elif python is None:
        step("runtime", "skipped", f"--no-runtime: the model only; {runtime.BOOTSTRAP} builds the venv later")
    else:
        row = runtime.install_runtime(slot, m, python)
        step("runtime", "ok" if row["passed"] else "FAILED", row["detail"])
        return [row]
    return []


def _engine_and_health(slot: Path, m: PackageManifest, device: str, opts: InstallOptions, step,
                       before: list[dict]) -> dict:
    """Steps engine, health: the health report (BEFORE's check rows first), written to SLOT/health.json."""
    fault("engine")
    if not all(c["passed"] for c in before):
        backend, plan, what = "", None, ""
        step("engine", "-", f"not run: the {runtime.CHECK} failed")
    else:
        try:
            backend, plan, what = _engine(slot, m, device, opts.staged)
            step("engine", "ok", what)
        except Exception as e:      # a device that cannot build or adopt an engine fails this install
            backend, plan, what = "", None, f"{type(e).__name__}: {e}"
            step("engine", "FAILED", what)
    fault("health")
    if backend:
        hopts = health.HealthOptions(golden=opts.golden, max_latency_ms=opts.max_latency_ms, backend=backend,
                                     engine=plan, staged=opts.staged)
        report = health.check(slot, m, hopts)
        report["checks"][:0] = before
        report = health.finish(report)
    else:
        failed = [{"check": "engine", "passed": False, "detail": what}] if what else []
        report = health.finish({"mode": "staged" if opts.staged else "device", "backend": None,
                                "checks": before + failed})
    health.write(slot, report)
    step("health", "ok" if report["passed"] else "FAILED",
         "; ".join(f"{c['check']} {'ok' if c['passed'] else 'FAILED'}" for c in report["checks"])
         if report["passed"] else report["why"])
    return report


def install(package: str | Path, pubkey: str | Path, root: str | Path,
            opts: InstallOptions = InstallOptions()) -> Report:
    """Verify PACKAGE with PUBKEY and install it under ROOT (the module doc's state machine). Refusals
    raise EdgesdkError before anything under ROOT changes; a failed health check returns a report
    with status "failed" (the active model untouched, the failed slot kept for inspection)."""
    package, root = Path(package), Path(root)
    steps: list[dict] = []

    def step(name: str, result: str, detail: str) -> None:
        steps.append({"step": name, "result": result, "detail": detail})

    if opts.keep < 1:
        raise InstallError(f"--keep {opts.keep}: keep at least 1 slot")
    if opts.max_latency_ms is not None and finite(opts.max_latency_ms, "--max-latency-ms") <= 0:
        raise InstallError(f"--max-latency-ms {opts.max_latency_ms}: must be positive")
    fault("verify")
    pub = keys.load_public(pubkey)
    v = read_package(package, pub, opts.limits)
    check_min_edgesdk(v.manifest, __version__, str(package))
    if opts.golden:
        golden_files(opts.golden)                      # a bad --golden is refused before any write
    device = target_device(v.manifest, opts, str(package))
    python = runtime.host_python(v.manifest.runtime, str(package)) \
        if v.manifest.runtime and opts.runtime and not opts.staged else None
    name = f"{v.manifest.version}-{v.sha256[:12]}"
    step("verify", "ok", f"signed by {pub.id_hex}; {len(v.manifest.members)} members match {META}; "
                         f"for {', '.join(v.manifest.devices) or 'any device'}, this is {device or 'unspecified'}")
    cur = link_target(root, CURRENT) if root.is_dir() else None
    link_target(root, PREVIOUS) if root.is_dir() else None      # refuses a foreign `previous` now
    rep = Report("installed", str(package), v.manifest.version, name, device, steps=steps)
    if decide(v, cur, opts) == "same" and not verify_slot(cur, pub):   # type: ignore[arg-type]
        rep.status = "current"
        step("decide", "ok", f"{name} is already current and verifies; nothing to do")
        return rep
    need = sum(e.bytes for e in v.manifest.members.values())
    if python is not None:      # the venv unpacks the wheels: about three times their size
        need += 3 * sum(v.manifest.members[w].bytes for w in v.manifest.runtime["wheels"])
    free = shutil.disk_usage(next(p for p in (root, *root.parents) if p.is_dir())).free
    if free < need + (16 << 20):
        raise InstallError(f"{root}: {free >> 20} MiB free, {package} needs {need >> 20} MiB + 16 MiB headroom")
    fault("lock")
    root.mkdir(parents=True, exist_ok=True)
    with locked(root):
        gone = clean_leftovers(root)
        cur = link_target(root, CURRENT)                # again, under the lock
        if cur is not None and cur.name == name and cur.exists():
            raise InstallError(f"{root / CURRENT}: the current slot {name} is this package but does not "
                               f"verify ({verify_slot(cur, pub)}); `edgesdk rollback` first, then install again")
        decide(v, cur, opts)
        (root / SLOTS).mkdir(exist_ok=True)
        if not (root / PUBKEY).is_file() or (root / PUBKEY).read_text() != pub.text():
            atomic_write_text(root / PUBKEY, pub.text())
        step("lock", "ok", f"{root} locked" + (f"; removed leftovers {', '.join(gone)}" if gone else ""))
        rep.previous = cur.name if cur else None
        slot = root / SLOTS / name
        _extract(package, pub, v, slot, opts.limits, step)
        before = _runtime(slot, v.manifest, python, opts, step)
        report = _engine_and_health(slot, v.manifest, device, opts, step, before)
        rep.health = report
        if not report["passed"]:
            rep.status = "failed"
            append_history(root, {"event": "health-failed", "slot": name, "version": v.manifest.version,
                                  "why": report["why"], "current": cur.name if cur else None})
            rep.removed = gc(root, opts.keep, protect=(slot,))
            step("current", "kept", f"{cur.name if cur else 'nothing'} stays current; {name} kept, marked failed")
            return rep
        fault("previous")
        if cur is not None and cur != slot:
            point(root, PREVIOUS, cur)
            step("previous", "ok", f"previous -> {SLOTS}/{cur.name}")
        else:
            step("previous", "-", "no earlier slot" if cur is None else "unchanged")
        fault("current")
        point(root, CURRENT, slot)
        step("current", "ok", f"current -> {SLOTS}/{name}")
        fault("history")
        append_history(root, {"event": "install", "slot": name, "version": v.manifest.version,
                              "package": package.name, "sha256": v.sha256, "device": device,
                              "previous": cur.name if cur else None, "staged": opts.staged})
        step("history", "ok", HISTORY)
        fault("gc")
        rep.removed = gc(root, opts.keep)
        step("gc", "ok", f"removed {', '.join(rep.removed)}" if rep.removed else f"nothing beyond --keep {opts.keep}")
    return rep


# rollback and status live in deploy/rollback.py; importable from here as before.
from edgesdk.deploy.rollback import rollback, status  # noqa: E402

__all__ = ["install", "rollback", "status", "InstallOptions", "Report", "STEPS"]
