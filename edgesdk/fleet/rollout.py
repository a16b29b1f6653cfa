"""Roll one signed package out to a group in waves, and halt by itself when a wave goes wrong.

  1. verify the package with the fleet key (a tampered package never leaves the workstation) and,
     with a URL, that the URL serves these very bytes; else publish it in chunks (retained);
  2. the devices are those that published a state in the group (or --devices, in that order);
     waves are cumulative counts of them: "1,10%,50%,100%" of 40 devices is 1, 4, 20, 40;
  3. per wave: publish the signed release naming every device targeted so far (retained, so a device
     that reconnects still gets it), then wait until each new device reports this release's result
     or --timeout passes;
  4. a wave is healthy when every device installed it (or already ran it). When more than
     --max-failures devices in all (failed health check, refused, error, or no answer in time) went
     wrong, the rollout halts: the release is withdrawn (its retained message cleared, so no late
     device starts it) and, with rollback_on_halt, the halted wave's devices that switched to it get a
     signed rollback command.
The report (JSON) holds the release, every wave, every device's row and the broker message counts."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgesdk.deploy import keys
from edgesdk.deploy.package import read_package
from edgesdk.errors import EdgesdkError, OptionError
from edgesdk.fleet import messages, topics
from edgesdk.fleet.broker import BrokerOptions, Link
from edgesdk.fleet.fetch import verify_url
from edgesdk.fleet.waves import BAD, OK, Watch, discover, plan_waves, row


class RolloutHalted(RuntimeError):
    """The rollout stopped at a wave (the message says which and why); .report has everything."""

    def __init__(self, msg: str, report: dict):
        super().__init__(msg)
        self.report = report


@dataclass(frozen=True)
class RolloutOptions:
    group: str
    waves: str = "1,10%,50%,100%"
    max_failures: int = 0
    timeout_s: float = 1200.0  # per wave: an engine build on a Jetson takes minutes
    url: str | None = None  # file:// or http(s)://; None: chunks over MQTT
    chunk_kb: int = 256
    rollback_on_halt: bool = False
    devices: tuple[str, ...] = ()  # () = every device with a state in the group, sorted
    discover_s: float = 3.0
    expires_h: float = 72.0
    release_id: str = ""
    allow_downgrade: bool = False  # devices install it even over a newer version (a fleet-wide step back)


def rollout(
    package: str | Path,
    key: str | Path,
    broker: BrokerOptions,
    opts: RolloutOptions,
    passphrase: bytes | None = None,
    on_change: Callable[[list[dict], str], None] | None = None,
) -> dict:
    """Run the rollout; returns the report, or raises RolloutHalted (with .report) when it halted."""
    t_start = time.monotonic()
    topics.check_name(opts.group, "--group")
    if opts.max_failures < 0 or opts.timeout_s <= 0 or opts.chunk_kb < 1:
        raise OptionError("--max-failures >= 0, --timeout > 0 and --chunk-kb >= 1, please")
    plan_waves(opts.waves, 10**6)  # a malformed --waves is refused before anything is sent
    private = keys.load_private(key, passphrase)
    pub = keys.public_of(private)
    package = Path(package)
    v = read_package(package, pub)  # signature and every member, before anything is sent
    data = package.read_bytes()
    m = v.manifest
    rid = opts.release_id or f"{m.name}-{m.version}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    topics.check_name(rid, "--release-id")
    pkg = {
        "name": m.name,
        "version": m.version,
        "manifest_sha256": v.sha256,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "url": opts.url or "mqtt:chunks",
        "chunks": None,
    }
    size = opts.chunk_kb << 10
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    if opts.url:
        if not opts.url.startswith(("file://", "http://", "https://")):
            raise OptionError(
                f"--url {opts.url!r}: file:///PATH or http(s)://HOST/PATH (or no --url: chunks over MQTT)"
            )
        verify_url(pkg)
    else:
        pkg["chunks"] = {"size": size, "sha256": [hashlib.sha256(p).hexdigest() for p in pieces]}
    slot = f"{m.version}-{v.sha256[:12]}"

    watch = Watch(opts.group)
    link = Link(
        broker,
        f"edgesdk-rollout-{opts.group}-{rid}"[:120],
        watch.on_message,
        (topics.devices(opts.group, "state"), topics.release(opts.group)),
    )
    link.start(wait=10)
    try:
        discover(watch, link, opts.discover_s)
        devices = list(dict.fromkeys(opts.devices)) or sorted(watch.states)
        for d in devices:
            topics.check_name(d, "--devices")
        if not devices:
            raise EdgesdkError(
                f"{broker.uri}: no device has published its state under "
                f"{topics.devices(opts.group, 'state')}; start `edgesdk agent --group {opts.group}` "
                "on the devices first (or check --group)"
            )
        plan = plan_waves(opts.waves, len(devices))
        _clear_old_chunks(link, watch.release, pub, opts.group, rid)
        if not opts.url:
            link.publish(
                [(topics.chunk(opts.group, rid, i), p) for i, p in enumerate(pieces)], timeout=max(opts.timeout_s, 60)
            )
        issued = int(time.time())
        report: dict[str, Any] = {
            "release_id": rid,
            "group": opts.group,
            "package": str(package),
            "broker": broker.uri,
            "slot": slot,
            "waves_spec": opts.waves,
            "max_failures": opts.max_failures,
            "waves": [],
            "devices": [],
            "rollback": [],
            "result": "running",
            "why": "",
        }
        wave_of: dict[str, int] = {}
        t_of: dict[str, float] = {}
        shown: dict[str, tuple] = {}

        def rows() -> list[dict]:
            return [row(d, wave_of[d], watch.get(d), rid, t_of[d]) for d in wave_of]

        def show(rs: list[dict], event: str = "") -> None:
            changed = [r for r in rs if shown.get(r["device"]) != (r["state"], r["version"], r["health"])]
            for r in changed:
                shown[r["device"]] = (r["state"], r["version"], r["health"])
            if on_change and (changed or event):
                on_change(rs, event)

        prev, failures, halted = 0, [], ""
        for k, n in enumerate(plan, 1):
            new = devices[prev:n]
            body = {
                "schema": messages.SCHEMA,
                "kind": "release",
                "group": opts.group,
                "release": rid,
                "issued": issued,
                "expires": issued + int(opts.expires_h * 3600),
                "wave": k,
                "devices": devices[:n],
                "package": pkg,
                "allow_downgrade": opts.allow_downgrade,
            }
            t_wave = time.monotonic()
            for d in new:
                wave_of[d], t_of[d] = k, t_wave
            link.publish([(topics.release(opts.group), messages.seal(body, private))], timeout=opts.timeout_s)
            show(
                rows(),
                f"wave {k}/{len(plan)}: {len(new)} device(s) ({', '.join(new[:8])}"
                f"{' …' if len(new) > 8 else ''}), {n} of {len(devices)} in all",
            )
            while time.monotonic() < t_wave + opts.timeout_s:
                rs = rows()
                show(rs)
                if all(r["state"] in OK + BAD for r in rs if r["device"] in new):
                    break
                time.sleep(0.2)
            rs = [
                {**r, "state": "timeout", "why": f"no answer within {opts.timeout_s:g} s"}
                if r["state"] not in OK + BAD
                else r
                for r in rows()
            ]
            bad = [r for r in rs if r["device"] in new and r["state"] in BAD]
            failures += bad
            report["waves"].append(
                {
                    "wave": k,
                    "devices": new,
                    "targeted": n,
                    "seconds": round(time.monotonic() - t_wave, 3),
                    "ok": [r["device"] for r in rs if r["device"] in new and r["state"] in OK],
                    "failed": [r["device"] for r in bad],
                }
            )
            report["devices"] = rs
            show(rs, f"wave {k}: {len(new) - len(bad)} ok, {len(bad)} failed")
            if len(failures) > opts.max_failures:
                halted = (
                    f"halted at wave {k} of {len(plan)}: {len(failures)} device(s) failed or did not answer "
                    f"(more than --max-failures {opts.max_failures}): "
                    + "; ".join(f"{r['device']} {r['state']}: {r['why'] or r['health']}" for r in failures[:5])
                )
                break
            prev = n
        if halted:
            link.publish([(topics.release(opts.group), b"")], timeout=opts.timeout_s)  # withdrawn: nobody starts it
            if not opts.url:
                link.publish(
                    [(topics.chunk(opts.group, rid, i), b"") for i in range(len(pieces))], timeout=opts.timeout_s
                )
            if opts.rollback_on_halt:
                report["rollback"] = _roll_back(link, watch, private, opts, rid, slot, report["devices"], new, show)
        report.update(
            result="halted" if halted else "complete",
            why=halted,
            seconds=round(time.monotonic() - t_start, 3),
            release=body,
            messages={**link.stats, "devices": len(devices)},
        )
    finally:
        link.close()
    if halted:
        raise RolloutHalted(halted, report)
    return report


def _roll_back(
    link: Link, watch: Watch, private, opts: RolloutOptions, rid: str, slot: str, rs: list[dict], wave: list[str], show
) -> list[dict]:
    """Signed rollback commands to the halted wave's devices that switched to SLOT (or did not answer:
    they get it, retained, when they return); waits for those that answer the release."""
    targets = [r for r in rs if r["device"] in wave and r["state"] in ("installed", "timeout")]
    now = int(time.time())
    cids = {r["device"]: f"rollback-{rid}"[:64] for r in targets}
    items = []
    for r in targets:
        body = {
            "schema": messages.SCHEMA,
            "kind": "rollback",
            "group": opts.group,
            "device": r["device"],
            "command": cids[r["device"]],
            "release": rid,
            "slot": slot,
            "issued": now,
            "expires": now + int(opts.expires_h * 3600),
        }
        items.append((topics.device(opts.group, r["device"], "cmd"), messages.seal(body, private)))
    if items:
        link.publish(items, timeout=opts.timeout_s)
    alive = {r["device"] for r in targets if r["state"] == "installed"}
    deadline = time.monotonic() + opts.timeout_s
    out: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for d in cids:
            res = ((watch.get(d) or {}).get("commands") or {}).get(cids[d])
            if res:
                out[d] = {
                    "device": d,
                    "state": res["result"],
                    "version": ((watch.get(d) or {}).get("current") or {}).get("version"),
                    "why": res.get("why", ""),
                }
        if alive <= set(out):
            break
        time.sleep(0.2)
    done = [(topics.device(opts.group, d, "cmd"), b"") for d in out]  # acknowledged: the retained command goes
    if done:
        link.publish(done, timeout=opts.timeout_s)
    rows = [
        out.get(d, {"device": d, "state": "sent", "version": None, "why": "not acknowledged yet (retained)"})
        for d in cids
    ]
    show(
        [
            {
                "device": r["device"],
                "wave": "rollback",
                "state": r["state"],
                "version": r["version"],
                "health": r["why"],
                "seconds": None,
            }
            for r in rows
        ],
        f"rollback: {len(out)} of {len(cids)} acknowledged",
    )
    return rows


def _clear_old_chunks(link: Link, retained: bytes, pub: keys.PublicKey, group: str, rid: str) -> None:
    """The chunks of the release this one replaces leave the broker (they are large and retained)."""
    if not retained:
        return
    try:
        old = messages.open_release(retained, pub, topics.release(group), group)
    except EdgesdkError:
        return
    ch = old["package"].get("chunks")
    if ch and old["release"] != rid:
        link.publish([(topics.chunk(group, old["release"], i), b"") for i in range(len(ch["sha256"]))])
