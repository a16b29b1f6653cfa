"""Pack a bundle into one signed archive, and read one back with every check (offline).

Archive (tar in gzip; the bundle's parity frames and golden images shrink, the ONNX weights a little):
  package.json            the manifest (manifest.PackageManifest): sha256 and size of every member
  package.json.minisig    Ed25519 signature over package.json, minisign's format
  bundle/...              the bundle folder: manifest.json and every file it lists
  engines/NAME.plan|json  optional prebuilt TensorRT plans + sidecars for the target devices
  golden/good/*.png, golden/<kind>/*.png   optional golden set for the health check
  runtime/wheels/*.whl, runtime/bootstrap.py   optional (pack --runtime): edgesdk and its base dependencies
                          for the target's platform and Python, and the script that installs them (runtime.py)
The two package files come first, so a reader checks the signature before it reads any other member."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from edgesdk import __version__
from edgesdk.bundle import Bundle
from edgesdk.deploy import keys
from edgesdk.deploy.archive import ArchiveError, Limits, copy_member
from edgesdk.deploy.archive import members as archive_members
from edgesdk.deploy.manifest import META, NAME, SIG, PackageManifest, version_key
from edgesdk.deploy.runtime import pack_runtime
from edgesdk.deploy.wheels import Target
from edgesdk.errors import EdgesdkError, OptionError, finite
from edgesdk.fsutil import publish, sweep_dead, temp_beside
from edgesdk.spec import MANIFEST, EngineSidecar, SpecError, file_entry, sha256_file

PARITY_SCORES_KEY = "onnxruntime_scores"  # parity.json field a bundle may record its reference scores in


@dataclass(frozen=True)
class PackOptions:
    version: str
    devices: tuple[str, ...] = ()  # device profile names; () = any device
    golden: str | None = None  # folder: good/*.png must pass, <kind>/*.png must be flagged
    engines: bool = False  # include BUNDLE/engines/ plans built for DEVICES
    name: str = ""  # default: the bundle folder's name
    min_edgesdk: str = ""  # default: the edgesdk that exported the bundle
    tolerance: float | None = None  # default: default_tolerance(precision)
    runtime: Target | None = None  # add the runtime for this platform (runtime/wheels, runtime/bootstrap.py)
    find_links: tuple[str, ...] = ()  # extra wheel folders for the runtime's pip download
    no_index: bool = False  # the runtime's wheels come from FIND_LINKS only


def reference_scores(b: Bundle) -> tuple[list[float], str]:
    """The bundle's parity frames' scores in ONNX Runtime (CPU), from parity.json when it records
    them, else computed now."""
    par = b.path / "parity.json"
    if "parity.json" in b.manifest.files and par.is_file():
        rec = json.loads(par.read_text()).get(PARITY_SCORES_KEY)
        if isinstance(rec, list) and rec:
            return [float(s) for s in rec], f"bundle parity.json {PARITY_SCORES_KEY}"
    from edgesdk.stream.detector import Detector, DetectorOptions

    frames = b.parity_frames()
    with Detector(b, DetectorOptions(providers="CPUExecutionProvider")) as det:
        return [float(det.predict(f).score) for f in frames], f"ONNX Runtime (CPU) at pack, edgesdk {__version__}"


def golden_files(folder: str | Path) -> dict[str, list[Path]]:
    """{"good": [...], kind: [...]} of a golden folder; good/ is required."""
    from edgesdk.images import list_images

    folder = Path(folder)
    if not (folder / "good").is_dir():
        raise SpecError(
            f"{folder}: a golden set needs good/ (images that must pass) and optionally "
            "<kind>/ folders of images that must be flagged"
        )
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not NAME.fullmatch(sub.name):
            raise SpecError(f"{sub}: golden folder names are letters, digits and '._-'")
        out[sub.name] = list_images(sub)
    return out


def golden_verdicts(det, files: dict[str, list[Path]]) -> list[dict]:
    """One row per golden image: kind, file, score, flagged, right (good passes, others flagged)."""
    from edgesdk.images import read_image

    rows = []
    for kind, paths in files.items():
        for p in paths:
            r = det.predict(read_image(p))
            rows.append(
                {
                    "kind": kind,
                    "file": f"{kind}/{p.name}",
                    "score": round(r.score, 4),
                    "flagged": bool(r.is_anomalous),
                    "right": bool(r.is_anomalous) == (kind != "good"),
                }
            )
    return rows


def _engines(b: Bundle, devices: tuple[str, ...]) -> tuple[list[tuple[str, Path]], list[dict]]:
    """Members for the plans in BUNDLE/engines built from this bundle for one of DEVICES."""
    if not devices:
        raise EdgesdkError("--engines: name the device profiles the engines are for with --device")
    found, rows = [], []
    for plan in sorted((b.path / "engines").glob("*.plan")):
        try:
            side = EngineSidecar.load(EngineSidecar.path_for(plan))
        except SpecError as e:
            rows.append({"engine": plan.name, "device": "?", "packed": False, "why": str(e)})
            continue
        why = (
            ("" if side.device in devices else f"built for {side.device}")
            or ("" if side.onnx_sha256 == b.onnx_sha256 else "built from another model.onnx")
            or (
                ""
                if plan.stat().st_size == side.plan_bytes and sha256_file(plan) == side.plan_sha256
                else "plan differs from its sidecar"
            )
        )
        rows.append({"engine": plan.name, "device": side.device, "packed": not why, "why": why})
        if not why:
            side_path = EngineSidecar.path_for(plan)
            found += [(f"engines/{plan.name}", plan), (f"engines/{side_path.name}", side_path)]
    if not found:
        raise EdgesdkError(
            f"{b.path / 'engines'}: --engines: no engine built from this bundle for "
            f"{', '.join(devices)}; build them with `edgesdk build {b.path} --device NAME`"
        )
    return found, rows


def pack(
    bundle: str | Path,
    key: str | Path,
    out: str | Path,
    opts: PackOptions,
    passphrase: bytes | None = None,
    limits: Limits = Limits(),
) -> dict:
    """Write the signed package OUT (refuses to overwrite); returns a report (manifest, members, times)."""
    out = Path(out)
    if (opts.find_links or opts.no_index) and opts.runtime is None:
        raise OptionError("--find-links and --no-index are for the runtime's wheels: give --runtime or --platform")
    version_key(opts.version, "--version")
    if out.exists() or out.is_symlink():
        raise EdgesdkError(f"{out}: already exists; refusing to overwrite a package")
    sweep_dead(out, "runtime")  # a killed pack's wheel folder: the PID in its name is gone
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.runtime.{os.getpid()}.") as work:
        return _pack(bundle, key, out, opts, passphrase, limits, Path(work))


def _pack(
    bundle: str | Path,
    key: str | Path,
    out: Path,
    opts: PackOptions,
    passphrase: bytes | None,
    limits: Limits,
    work: Path,
) -> dict:
    t0 = time.perf_counter()
    private = keys.load_private(key, passphrase)
    b = Bundle.open(bundle)
    from edgesdk.devices import load_profile

    devices = tuple(dict.fromkeys(load_profile(d).name for d in opts.devices))
    name = opts.name or b.path.resolve().name
    if not NAME.fullmatch(name):
        raise SpecError(f"package name {name!r}: 1-64 letters, digits, '._-' (give --name)")
    sources: list[tuple[str, Path]] = [(f"bundle/{MANIFEST}", b.path / MANIFEST)]
    sources += [(f"bundle/{n}", b.path / n) for n in sorted(b.manifest.files)]
    engine_rows: list[dict] = []
    engines: list[dict] = []
    if opts.engines:
        found, engine_rows = _engines(b, devices)
        sources += found
        for (plan_m, plan), (side_m, _) in zip(found[::2], found[1::2]):
            engines.append(
                {"plan": plan_m, "sidecar": side_m, "device": EngineSidecar.load(EngineSidecar.path_for(plan)).device}
            )
    refs, source = reference_scores(b)
    golden, golden_rows = {}, []
    if opts.golden:
        files = golden_files(opts.golden)
        from edgesdk.stream.detector import Detector, DetectorOptions

        with Detector(b, DetectorOptions(providers="CPUExecutionProvider")) as det:
            golden_rows = golden_verdicts(det, files)
        wrong = [r["file"] for r in golden_rows if not r["right"]]
        if wrong:
            raise EdgesdkError(
                f"{opts.golden}: this bundle gets {len(wrong)} golden image(s) wrong "
                f"({', '.join(wrong[:5])}): every device would fail its health check"
            )
        sources += [(f"golden/{k}/{p.name}", p) for k, ps in files.items() for p in ps]
        golden = {"good": len(files["good"]), "kinds": {k: len(v) for k, v in files.items() if k != "good"}}
    from edgesdk.measure.compare import default_tolerance  # the rule `edgesdk verify` applies to engines

    tol = default_tolerance(b.manifest.precision) if opts.tolerance is None else finite(opts.tolerance, "--tolerance")
    runtime: dict = {}
    runtime_rep: dict | None = None
    if opts.runtime is not None:
        found_rt, runtime, runtime_rep = pack_runtime(opts.runtime, work, opts.find_links, opts.no_index)
        sources += found_rt
    manifest = PackageManifest(
        name=name,
        version=opts.version,
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        devices=devices,
        min_edgesdk=opts.min_edgesdk or b.manifest.edgesdk_version or __version__,
        model={
            "name": b.manifest.model.get("name", ""),
            "precision": b.manifest.precision,
            "onnx_sha256": b.onnx_sha256,
            "threshold": b.threshold,
        },
        health={
            "reference_scores": refs,
            "reference_source": source,
            "tolerance": tol,
            "frames": "bundle/parity_frames.npy",
        },
        members={m: file_entry(p) for m, p in sources},
        golden=golden,
        engines=tuple(engines),
        runtime=runtime,
    )
    meta = manifest.to_json()
    manifest.check(str(out), limits)
    comment = f"timestamp:{int(time.time())}\tfile:{META}\tprehashed\tedgesdk package {name} {opts.version}"
    sig = keys.sign(meta, private, comment).encode()
    t1 = time.perf_counter()
    with temp_beside(out) as tmp:
        entries: list[tuple[str, bytes | Path]] = [(META, meta), (SIG, sig), *sources]
        write_archive(tmp, entries, int(time.time()))
        t2 = time.perf_counter()
        read_package(tmp, keys.public_of(private), limits)  # a package that does not verify never leaves
        os.chmod(tmp, 0o644)
        try:
            publish(tmp, out)
        except FileExistsError:
            raise EdgesdkError(f"{out}: appeared while packing (another pack?); not replaced") from None
    return {
        "package": str(out),
        "bytes": out.stat().st_size,
        "sha256": hashlib.sha256(meta).hexdigest(),
        "manifest": json.loads(meta),
        "engines": engine_rows,
        "golden": golden_rows,
        "runtime": runtime_rep,
        "seconds": {"prepare": t1 - t0, "write": t2 - t1, "verify": time.perf_counter() - t2},
    }


def write_archive(path: Path, entries: list[tuple[str, bytes | Path]], mtime: int) -> None:
    """A tar in gzip of ENTRIES (member name, bytes or a file), plain metadata, fsynced."""
    with open(path, "wb") as raw:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, src in entries:
                ti = tarfile.TarInfo(name)
                ti.mode, ti.mtime = 0o644, mtime
                if isinstance(src, bytes):
                    ti.size = len(src)
                    tar.addfile(ti, io.BytesIO(src))
                else:
                    ti.size = src.stat().st_size
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)
        raw.flush()
        os.fsync(raw.fileno())


@dataclass(frozen=True)
class Verified:
    """A package that passed every check: its manifest, the exact bytes signed, and the signature."""

    path: Path
    manifest: PackageManifest
    manifest_bytes: bytes
    signature: bytes
    trusted_comment: str | None  # None: the signature was not checked (no public key given)
    members: list[dict] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


def read_package(
    path: str | Path,
    pub: keys.PublicKey | None,
    limits: Limits = Limits(),
    sink: Callable[[str], IO[bytes]] | None = None,
    rows: list | None = None,
) -> Verified:
    """Read the package at PATH once, start to end: signature over package.json (with PUB; skipped
    when None), then every member against package.json (listed, size, sha256), none missing. With
    SINK, each member's bytes are also written to SINK(member name) as they are checked (the caller
    discards everything when this raises). ROWS, if given, collects one row per member read."""
    path = Path(path)
    it = archive_members(path, limits)
    meta = sig = b""
    for want in (META, SIG):
        got = next(it, None)
        if got is None or got[0].name != want:
            raise ArchiveError(
                f"{path}: member {want} must come {'first' if want == META else 'second'} "
                f"(found {got[0].name if got else 'the end of the archive'!r}); not an edgesdk package"
            )
        ti, f = got
        if ti.size > limits.meta_bytes:
            raise ArchiveError(f"{path}: {want} is {ti.size} bytes, over the limit of {limits.meta_bytes}")
        buf = io.BytesIO()
        if copy_member(f, ti.size, buf, hashlib.sha256(), f"{path}: member {want}") != ti.size:
            raise ArchiveError(f"{path}: {want} is truncated")
        meta, sig = (buf.getvalue(), sig) if want == META else (meta, buf.getvalue())
    where = f"{path}!{META}"
    comment = None
    if pub is not None:
        try:
            sig_text = sig.decode()
        except UnicodeDecodeError:
            raise keys.SignatureError(f"{path}!{SIG}: not a minisign signature (not text)") from None
        comment = keys.verify(meta, sig_text, pub, f"{path}!{SIG}")
    manifest = PackageManifest.from_json(meta, where, limits)
    seen = set()
    for ti, f in it:
        entry = manifest.members.get(ti.name)
        if entry is None:
            raise ArchiveError(f"{path}: member {ti.name!r} is not listed in {META}; refused")
        if ti.size != entry.bytes:
            raise ArchiveError(f"{path}: member {ti.name!r} is {ti.size} bytes, {META} says {entry.bytes}")
        h = hashlib.sha256()
        out = sink(ti.name) if sink is not None else None
        try:
            n = copy_member(f, ti.size, out, h, f"{path}: member {ti.name!r}")
        finally:
            if out is not None:
                out.close()
        if n != ti.size:
            raise ArchiveError(f"{path}: member {ti.name!r} is truncated ({n} of {ti.size} bytes)")
        if h.hexdigest() != entry.sha256:
            raise ArchiveError(
                f"{path}: member {ti.name!r}: sha256 {h.hexdigest()[:12]}… does not match "
                f"{META}'s {entry.sha256[:12]}… (changed after signing)"
            )
        seen.add(ti.name)
        if rows is not None:
            rows.append({"member": ti.name, "bytes": ti.size, "sha256": entry.sha256[:12], "ok": True})
    missing = sorted(set(manifest.members) - seen)
    if missing:
        raise ArchiveError(
            f"{path}: {len(missing)} member(s) listed in {META} are missing from the archive ({', '.join(missing[:3])})"
        )
    return Verified(path, manifest, meta, sig, comment, rows if rows is not None else [])


def inspect(path: str | Path, pub_path: str | Path | None = None, limits: Limits = Limits()) -> dict:
    """Members, manifest and whether the package verifies (and why not); never raises for a bad package
    (a missing or malformed public key still raises: that is the caller's input)."""
    pub = keys.load_public(pub_path) if pub_path is not None else None
    rows: list[dict] = []
    try:
        v = read_package(path, pub, limits, rows=rows)
    except EdgesdkError as e:
        return {"package": str(path), "verified": False, "reason": str(e), "members": rows, "manifest": None}
    return {
        "package": str(path),
        "verified": pub is not None,
        "reason": "" if pub is not None else "signature not checked: give --pubkey",
        "signed_by": pub.id_hex if pub else None,
        "trusted_comment": v.trusted_comment,
        "package_sha256": v.sha256,
        "members": rows,
        "manifest": json.loads(v.manifest_bytes),
    }
