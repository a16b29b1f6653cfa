"""The package manifest (package.json): what a package holds and how a device checks it, and the
version order installs follow. Standard library only."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from edgesdk.deploy.archive import ArchiveError, Limits, check_name
from edgesdk.errors import EdgesdkError, finite, no_nonfinite
from edgesdk.spec import FileEntry, SpecError

FORMAT, PACKAGE_SCHEMA = "edgesdk-package", 1
META, SIG = "package.json", "package.json.minisig"
VERSION = re.compile(r"(\d{1,9}(?:\.\d{1,9}){0,3})(?:-([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def version_key(version: str, where: str = "version") -> tuple:
    """Sort key of a semver-ish version: 1 to 4 numbers compared numerically (1.10 > 1.9, 1.2 == 1.2.0),
    then an optional pre-release (1.0-rc.2 < 1.0-rc.10 < 1.0)."""
    m = VERSION.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise SpecError(
            f"{where}: {version!r} is not a version (1 to 4 dot-separated numbers, optionally "
            "-prerelease, e.g. 1.4.0 or 2.0.0-rc.1)"
        )
    nums = tuple(int(p) for p in m.group(1).split("."))
    nums += (0,) * (4 - len(nums))
    pre = m.group(2)
    if pre is None:
        return nums, 1, ()
    return nums, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))


@dataclass(frozen=True)
class PackageManifest:
    name: str
    version: str
    created_utc: str
    devices: tuple[str, ...]  # device profile names it may install on; () = any
    min_edgesdk: str  # oldest edgesdk that runs it
    model: dict  # name, precision, onnx_sha256, threshold (from the bundle)
    health: dict  # reference_scores, reference_source, tolerance, frames
    members: dict[str, FileEntry]  # every member but package.json and its signature
    golden: dict = field(default_factory=dict)  # {"good": n, "kinds": {kind: n}} or {}
    engines: tuple[dict, ...] = ()  # {"plan", "sidecar", "device"}: prebuilt plans and their sidecars
    runtime: dict = field(default_factory=dict)  # the packed runtime (deploy/runtime.py) or {}
    format: str = FORMAT
    package_schema: int = PACKAGE_SCHEMA

    @property
    def sort_key(self) -> tuple:
        return version_key(self.version)

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        d["members"] = {k: dataclasses.asdict(v) for k, v in self.members.items()}
        if not self.runtime:
            del d["runtime"]  # a package without one reads as before on older devices
        return (json.dumps(d, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str, limits: Limits = Limits()) -> "PackageManifest":
        try:
            d = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SpecError(f"{where}: not an edgesdk package manifest (format {FORMAT!r})")
        if d.get("package_schema") != PACKAGE_SCHEMA:
            raise SpecError(
                f"{where}: package_schema {d.get('package_schema')!r} is not supported (this edgesdk "
                f"reads {PACKAGE_SCHEMA}); upgrade edgesdk on this device"
            )
        no_nonfinite(d, where)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if unknown or missing:
            raise SpecError(
                f"{where}: " + (f"unknown field {unknown[0]!r}" if unknown else f"missing field {missing[0]!r}")
            )
        try:
            m = cls(
                name=d["name"],
                version=d["version"],
                created_utc=str(d["created_utc"]),
                devices=tuple(d["devices"]),
                min_edgesdk=d["min_edgesdk"],
                model=dict(d["model"]),
                health=dict(d["health"]),
                members={k: FileEntry(**v) for k, v in dict(d["members"]).items()},
                golden=dict(d.get("golden") or {}),
                engines=tuple(dict(e) for e in d.get("engines", ())),
                runtime=dict(d.get("runtime") or {}),
                format=d["format"],
                package_schema=d["package_schema"],
            )
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: malformed field ({e})") from None
        m.check(where, limits)
        return m

    def check(self, where: str, limits: Limits = Limits()) -> None:
        """Every field well-formed, every named path a plain member, sizes within LIMITS."""
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise SpecError(f"{where}: name {self.name!r} must be 1-64 letters, digits, '._-'")
        version_key(self.version, f"{where}: version")
        version_key(self.min_edgesdk, f"{where}: min_edgesdk")
        for dev in self.devices:
            if not isinstance(dev, str) or not NAME.fullmatch(dev):
                raise SpecError(f"{where}: devices: {dev!r} is not a device profile name")
        if len(self.members) > limits.members:
            raise ArchiveError(f"{where}: lists {len(self.members)} members, over the limit of {limits.members}")
        total = 0
        for name, e in self.members.items():
            try:
                check_name(name, f"{where}: members")
            except ArchiveError as err:
                raise SpecError(str(err)) from None
            if (
                name in (META, SIG)
                or not isinstance(e.sha256, str)
                or not SHA256.fullmatch(e.sha256)
                or not isinstance(e.bytes, int)
                or isinstance(e.bytes, bool)
                or e.bytes < 0
            ):
                raise SpecError(f"{where}: members[{name!r}] needs a sha256 (64 hex digits) and a byte count")
            if e.bytes > limits.member_bytes:
                raise ArchiveError(
                    f"{where}: member {name!r} is {e.bytes} bytes, over the member limit of {limits.member_bytes}"
                )
            total += e.bytes
        if total > limits.total_bytes:
            raise ArchiveError(f"{where}: members add up to {total} bytes, over the limit of {limits.total_bytes}")
        if "bundle/manifest.json" not in self.members:
            raise SpecError(f"{where}: members lack bundle/manifest.json (a package carries one bundle)")
        scores = self.health.get("reference_scores")
        if not isinstance(scores, list) or not scores:
            raise SpecError(f"{where}: health.reference_scores must be a non-empty list of scores")
        for i, s in enumerate(scores):
            finite(s, f"health.reference_scores[{i}]", where)
        if finite(self.health.get("tolerance"), "health.tolerance", where) <= 0:
            raise SpecError(f"{where}: health.tolerance must be positive")
        for eng in self.engines:
            for k in ("plan", "sidecar"):
                if eng.get(k) not in self.members:
                    raise SpecError(f"{where}: engines: {k} {eng.get(k)!r} is not a member")
        if self.runtime:
            from edgesdk.deploy.runtime import check_description

            check_description(self.runtime, {k: dataclasses.asdict(v) for k, v in self.members.items()}, where)

    def golden_members(self) -> dict[str, list[str]]:
        """{"good": [member, ...], kind: [...]} of the packaged golden set ({} when none)."""
        out: dict[str, list[str]] = {}
        for name in sorted(self.members):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "golden":
                out.setdefault(parts[1], []).append(name)
        return out


def check_min_edgesdk(m: PackageManifest, running: str, where: str) -> None:
    if version_key(running) < version_key(m.min_edgesdk):
        raise EdgesdkError(
            f"{where}: needs edgesdk >= {m.min_edgesdk}; this device runs {running}: upgrade edgesdk first"
        )
