"""Install, roll back and report model slots under a root folder (layout.py holds the root's layout,
steps.py the steps that write and check a slot; docs/DEPLOY.md the whole story).

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

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgesdk import __version__
from edgesdk.deploy import keys, runtime
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
    gc,
    link_target,
    locked,
    point,
    slot_manifest,
    verify_slot,
)
from edgesdk.deploy.manifest import META, PackageManifest, check_min_edgesdk, version_key
from edgesdk.deploy.package import Verified, golden_files, read_package
from edgesdk.deploy.steps import FAULT_ENV, STEPS, engine_and_health, extract, fault, runtime_check
from edgesdk.errors import EdgesdkError, finite
from edgesdk.fsutil import atomic_write_text


@dataclass(frozen=True)
class InstallOptions:
    golden: str | None = None  # golden folder that replaces the packaged one
    allow_downgrade: bool = False  # install an older version, or another package of the same version
    max_latency_ms: float | None = None
    keep: int = 3  # slots kept by gc, current and previous included
    device: str | None = None  # device profile name; None: detect this machine
    staged: bool = False  # edgesdk stage: a root filesystem for another machine
    runtime: bool = True  # build a packed runtime's venv (False: --no-runtime, the model only)
    limits: Limits = field(default_factory=Limits)


@dataclass
class Report:
    status: str  # "installed", "current" (already; nothing done) or "failed"
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

    def raise_if_failed(self) -> None:
        """InstallError when the health check failed (the slot is kept, marked failed; current unchanged)."""
        if not self.ok:
            why = self.health["why"] if self.health else "failed"
            raise InstallError(
                f"{self.package}: health check failed: {why}; slot {self.slot} kept "
                f"(marked failed); current is still {self.previous or 'nothing'}"
            )


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
        raise InstallError(
            f"{where}: built for {', '.join(m.devices)}; this device is "
            f"{name or 'unknown'} ({why}). Install a package built for it "
            "(or give --device NAME when staging)"
        )
    return name


def decide(v: Verified, current: Path | None, opts: InstallOptions) -> str:
    """ "install", or "same" when the package is already current; refuses a downgrade."""
    try:
        cur = slot_manifest(current) if current is not None else None
    except (OSError, EdgesdkError):
        cur = None  # a damaged current slot must not block the install that replaces it
    if cur is None or current is None:
        return "install"
    new_key, cur_key = version_key(v.manifest.version), version_key(cur.version)
    same_pkg = (current / META).read_bytes() == v.manifest_bytes
    if same_pkg:
        return "same"
    if opts.allow_downgrade:
        return "install"
    if new_key < cur_key:
        raise InstallError(
            f"{v.path}: version {v.manifest.version} is older than the active {cur.version} "
            f"({current.name}); refused (--allow-downgrade installs it anyway)"
        )
    if new_key == cur_key:
        raise InstallError(
            f"{v.path}: version {v.manifest.version} is already active as another package "
            f"({current.name}); a version names one package: give this one a new version "
            "(or --allow-downgrade)"
        )
    return "install"


def install(
    package: str | Path, pubkey: str | Path, root: str | Path, opts: InstallOptions = InstallOptions()
) -> Report:
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
        golden_files(opts.golden)  # a bad --golden is refused before any write
    device = target_device(v.manifest, opts, str(package))
    python = (
        runtime.host_python(v.manifest.runtime, str(package))
        if v.manifest.runtime and opts.runtime and not opts.staged
        else None
    )
    name = f"{v.manifest.version}-{v.sha256[:12]}"
    step(
        "verify",
        "ok",
        f"signed by {pub.id_hex}; {len(v.manifest.members)} members match {META}; "
        f"for {', '.join(v.manifest.devices) or 'any device'}, this is {device or 'unspecified'}",
    )
    cur = link_target(root, CURRENT) if root.is_dir() else None
    link_target(root, PREVIOUS) if root.is_dir() else None  # refuses a foreign `previous` now
    rep = Report("installed", str(package), v.manifest.version, name, device, steps=steps)
    if decide(v, cur, opts) == "same" and not verify_slot(cur, pub):  # type: ignore[arg-type]
        rep.status = "current"
        step("decide", "ok", f"{name} is already current and verifies; nothing to do")
        return rep
    need = sum(e.bytes for e in v.manifest.members.values())
    if python is not None:  # the venv unpacks the wheels: about three times their size
        need += 3 * sum(v.manifest.members[w].bytes for w in v.manifest.runtime["wheels"])
    free = shutil.disk_usage(next(p for p in (root, *root.parents) if p.is_dir())).free
    if free < need + (16 << 20):
        raise InstallError(f"{root}: {free >> 20} MiB free, {package} needs {need >> 20} MiB + 16 MiB headroom")
    fault("lock")
    root.mkdir(parents=True, exist_ok=True)
    with locked(root):
        gone = clean_leftovers(root)
        cur = link_target(root, CURRENT)  # again, under the lock
        if cur is not None and cur.name == name and cur.exists():
            raise InstallError(
                f"{root / CURRENT}: the current slot {name} is this package but does not "
                f"verify ({verify_slot(cur, pub)}); `edgesdk rollback` first, then install again"
            )
        decide(v, cur, opts)
        (root / SLOTS).mkdir(exist_ok=True)
        if not (root / PUBKEY).is_file() or (root / PUBKEY).read_text() != pub.text():
            atomic_write_text(root / PUBKEY, pub.text())
        step("lock", "ok", f"{root} locked" + (f"; removed leftovers {', '.join(gone)}" if gone else ""))
        rep.previous = cur.name if cur else None
        slot = root / SLOTS / name
        extract(package, pub, v, slot, opts.limits, step)
        before = runtime_check(slot, v.manifest, python, opts, step)
        report = engine_and_health(slot, v.manifest, device, opts, step, before)
        rep.health = report
        if not report["passed"]:
            rep.status = "failed"
            append_history(
                root,
                {
                    "event": "health-failed",
                    "slot": name,
                    "version": v.manifest.version,
                    "why": report["why"],
                    "current": cur.name if cur else None,
                },
            )
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
        append_history(
            root,
            {
                "event": "install",
                "slot": name,
                "version": v.manifest.version,
                "package": package.name,
                "sha256": v.sha256,
                "device": device,
                "previous": cur.name if cur else None,
                "staged": opts.staged,
            },
        )
        step("history", "ok", HISTORY)
        fault("gc")
        rep.removed = gc(root, opts.keep)
        step("gc", "ok", f"removed {', '.join(rep.removed)}" if rep.removed else f"nothing beyond --keep {opts.keep}")
    return rep


# rollback and status live in deploy/rollback.py; importable from here as before.
from edgesdk.deploy.rollback import rollback, status  # noqa: E402

__all__ = ["install", "rollback", "status", "InstallOptions", "Report", "STEPS", "FAULT_ENV", "fault"]
