"""`edgesdk keygen | pack | inspect | install | stage | service | rollback | status`: parse, call one
edgesdk.deploy function, print one table (or --json)."""

from __future__ import annotations

from pathlib import Path

from edgesdk.cli._common import emit, finite_float, table


def _steps(rep) -> str:
    return table(
        rep.steps,
        ["step", "result", "detail"],
        title=f"{rep.status}: {rep.package} {rep.version} -> slot {rep.slot} (device {rep.device or '-'})",
    )


def cmd_keygen(args) -> None:
    from edgesdk.deploy.keys import keygen, load_public, read_passphrase

    key, pub = keygen(args.out, read_passphrase(args.passphrase_file))
    p = load_public(pub)
    emit(
        args,
        {"key": str(key), "pubkey": str(pub), "key_id": p.id_hex, "encrypted": bool(args.passphrase_file)},
        table(
            [
                {
                    "file": str(key),
                    "what": "private key (PKCS8 PEM, mode 0600"
                    + (", encrypted)" if args.passphrase_file else ", not encrypted)"),
                },
                {"file": str(pub), "what": f"public key, minisign format, key id {p.id_hex}"},
            ]
        ),
    )


def cmd_pack(args) -> None:
    from edgesdk.deploy.keys import read_passphrase
    from edgesdk.deploy.package import PackOptions, pack
    from edgesdk.deploy.wheels import target

    opts = PackOptions(
        version=args.version,
        devices=tuple(args.device or ()),
        golden=args.golden,
        engines=args.engines,
        name=args.name or "",
        min_edgesdk=args.min_edgesdk or "",
        tolerance=args.tolerance,
        runtime=target(args.runtime, tuple(args.platform or ()), args.python),
        find_links=tuple(args.find_links or ()),
        no_index=args.no_index,
    )
    r = pack(args.bundle, args.key, args.out, opts, read_passphrase(args.passphrase_file))
    m = r["manifest"]
    rows = [{"member": k, "bytes": v["bytes"], "sha256": v["sha256"][:12]} for k, v in m["members"].items()]
    text = table(
        rows,
        title=f"{r['package']}: {m['name']} {m['version']}, {r['bytes'] / 1e6:.2f} MB, "
        f"for {', '.join(m['devices']) or 'any device'}, package.json sha256 {r['sha256'][:12]}",
    )
    if r["engines"]:
        text += "\n\n" + table(r["engines"], title="engines")
    if r["runtime"]:
        rt = r["runtime"]
        text += (
            f"\nruntime: {len(rt['wheels'])} wheels, {rt['bytes'] / 1e6:.1f} MB, for Python {rt['python']} on "
            f"{rt['machine']} ({', '.join(rt['platforms'])})"
        )
    emit(args, r, text)


def cmd_inspect(args) -> None:
    from edgesdk.deploy.package import inspect

    r = inspect(args.package, args.pubkey)
    m = r["manifest"] or {}
    head = (
        f"{r['package']}: {m.get('name', '?')} {m.get('version', '?')}, for "
        f"{', '.join(m.get('devices') or []) or 'any device'}; "
        + ("VERIFIED, signed by " + r["signed_by"] if r["verified"] else "NOT VERIFIED: " + r["reason"])
    )
    emit(args, r, table(r["members"], title=head) + ("\n" + head if r["members"] else ""))


def cmd_install(args) -> None:
    from edgesdk.deploy.slots import InstallOptions, install

    rep = install(
        args.package,
        args.pubkey,
        args.root,
        InstallOptions(
            golden=args.golden,
            allow_downgrade=args.allow_downgrade,
            max_latency_ms=args.max_latency_ms,
            keep=args.keep,
            device=args.device,
            runtime=not args.no_runtime,
        ),
    )
    emit(args, rep.to_dict(), _steps(rep))
    rep.raise_if_failed()


def _service_opts(args):
    from edgesdk.deploy.service_plan import ServiceOptions

    return ServiceOptions(
        source=args.source,
        sinks=tuple(args.sink or ()),
        user=args.user,
        name=args.name,
        watchdog_s=args.watchdog_s,
        device_allow=tuple(args.device_allow or ()),
        runtime=args.runtime,
    )


def cmd_stage(args) -> None:
    from edgesdk.deploy.stage import stage_with_unit
    from edgesdk.errors import OptionError

    if (args.source or args.sink) and not (args.source and args.sink):
        raise OptionError("stage: --source and --sink go together (they make the service unit)")
    rep, written, notes = stage_with_unit(
        args.package,
        args.pubkey,
        args.rootfs,
        args.prefix,
        _service_opts(args) if args.source else None,
        f"{args.name}.service",
        device=args.device,
        golden=args.golden,
        keep=args.keep,
        allow_downgrade=args.allow_downgrade,
    )
    _notes("stage", notes)
    emit(args, {**rep.to_dict(), "written": written}, _steps(rep) + "".join(f"\n{k}: {v}" for k, v in written.items()))
    rep.raise_if_failed()


def _notes(cmd: str, notes: list[str]) -> None:
    import sys

    for note in notes:
        print(f"edgesdk {cmd}: note: {note}", file=sys.stderr)


def cmd_service(args) -> None:
    from edgesdk.deploy.service import service

    r = service(args.root, args.out, _service_opts(args))
    _notes("service", r["notes"])
    emit(
        args,
        {k: v for k, v in r.items() if k != "text"},
        f"{r['unit']}: {args.name} runs {r['executable']} ({r['runtime']} runtime) on {r['root']}/current\n"
        f"enable it: cp {r['unit']} /etc/systemd/system/ && systemctl daemon-reload && "
        f"systemctl enable --now {Path(r['unit']).name}",
    )


def cmd_rollback(args) -> None:
    from edgesdk.deploy.slots import rollback

    r = rollback(args.root, args.pubkey)
    emit(args, r, table([r], title="rolled back"))


def cmd_status(args) -> None:
    from edgesdk.deploy.slots import status

    r = status(args.root, args.pubkey)
    cols = ["slot", "version", "state", "current", "previous", "verifies", "health", "p50 ms"]
    hist = [
        {
            "utc": h.get("utc"),
            "event": h.get("event"),
            "slot": h.get("slot"),
            "version": h.get("version"),
            "detail": h.get("why") or (f"from {h['from']}" if h.get("from") else ""),
        }
        for h in r["history"][-10:]
    ]
    text = table(r["slots"], cols, title=f"{r['root']}: current {r['current']}, previous {r['previous']}")
    bad = [f"{s['slot']}: {s['why']}" for s in r["slots"] if not s["verifies"]]
    text += "".join(f"\ndoes not verify: {b}" for b in bad)
    text += "\n\n" + table(hist, title=f"history (last {len(hist)} of {len(r['history'])})")
    emit(args, r, text)


def add_commands(sub) -> None:
    """Register the deployment commands on edgesdk.cli's subparsers."""
    s = sub.add_parser("keygen", help="Ed25519 key pair for signing packages (minisign-compatible public key)")
    s.add_argument("--out", required=True, help="folder for edgesdk.key and edgesdk.pub (never overwritten)")
    s.add_argument("--passphrase-file", help="encrypt the private key with the first line of this file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_keygen)

    s = sub.add_parser("pack", help="bundle -> one signed package for devices")
    s.add_argument("bundle")
    s.add_argument("--key", required=True, help="private key from `edgesdk keygen`")
    s.add_argument("--version", required=True, help="package version, e.g. 1.4.0 (compared numerically)")
    s.add_argument("--out", required=True, help="package file to write, e.g. brick-1.4.0.tgz (tar in gzip)")
    s.add_argument("--device", action="append", help="device profile it may install on (repeat); default any")
    s.add_argument("--golden", help="golden set: good/*.png must pass, <kind>/*.png must be flagged")
    s.add_argument("--engines", action="store_true", help="include BUNDLE/engines plans built for --device")
    s.add_argument("--name", help="package name (default: the bundle folder's name)")
    s.add_argument("--min-edgesdk", help="oldest edgesdk that may install it (default: the bundle's exporter)")
    s.add_argument(
        "--tolerance",
        type=finite_float,
        help="health check: max |score - reference| (default 0.05 fp32, 0.25 fp16/int8)",
    )
    s.add_argument("--passphrase-file", help="passphrase of an encrypted key")
    s.add_argument(
        "--runtime",
        metavar="PROFILE",
        help="add the runtime (edgesdk and its dependencies as wheels) for "
        "this device profile's platform and Python, e.g. orin-nx (JetPack 6: aarch64, Python 3.10)",
    )
    s.add_argument(
        "--platform",
        action="append",
        metavar="TAG",
        help="runtime for this wheel platform (repeat), e.g. manylinux_2_35_aarch64; with --python",
    )
    s.add_argument("--python", metavar="X.Y", help="the target's Python for --platform, e.g. 3.10")
    s.add_argument("--find-links", action="append", metavar="DIR", help="wheel folder pip also looks in (repeat)")
    s.add_argument("--no-index", action="store_true", help="runtime wheels from --find-links only (offline pack)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_pack)

    s = sub.add_parser("inspect", help="a package's members and manifest, and whether it verifies")
    s.add_argument("package")
    s.add_argument("--pubkey", help="check the signature with this public key")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_inspect)

    def install_args(s):
        s.add_argument("package")
        s.add_argument("--pubkey", required=True, help="public key the package must be signed with")
        s.add_argument("--golden", help="golden folder for the health check (replaces the packaged one)")
        s.add_argument(
            "--allow-downgrade",
            action="store_true",
            help="install an older version, or another package of the active version",
        )
        s.add_argument("--keep", type=int, default=3, help="slots kept, current and previous included (default 3)")
        s.add_argument("--device", help="device profile to install for (default: detect this machine)")
        s.add_argument("--json", action="store_true")

    s = sub.add_parser("install", help="verify a package, install it into a new slot, health-check, switch")
    install_args(s)
    s.add_argument("--root", required=True, help="deployment root (slots/, current, previous, history.jsonl)")
    s.add_argument("--max-latency-ms", type=finite_float, help="health check: p50 latency budget")
    s.add_argument(
        "--no-runtime",
        action="store_true",
        help="install the model without building the packed "
        "runtime's venv (a package whose runtime is for another machine or Python)",
    )
    s.set_defaults(fn=cmd_install)

    def unit_args(s, required: bool):
        s.add_argument("--source", required=required, help="what `edgesdk run` reads, e.g. v4l2:///dev/video0")
        s.add_argument(
            "--sink",
            action="append",
            required=required,
            help="where it writes (repeat), absolute paths: jsonl:///var/lib/edgesdk/verdicts.jsonl",
        )
        s.add_argument("--user", default="edgesdk", help="the unprivileged user it runs as (default edgesdk)")
        s.add_argument("--name", default="edgesdk", help="service name: logs, /var/lib/NAME (default edgesdk)")
        s.add_argument(
            "--watchdog-s",
            type=finite_float,
            default=10.0,
            help="restart when the stream loop makes no progress this long (default 10)",
        )
        s.add_argument("--device-allow", action="append", help="another device node it may open (repeat)")
        s.add_argument(
            "--runtime",
            choices=["auto", "system", "slot"],
            default="auto",
            help="slot: the current slot's packaged runtime; system: this edgesdk; auto: slot "
            "when the current slot has one (default)",
        )

    s = sub.add_parser("stage", help="install a package into a target root filesystem folder (not run here)")
    install_args(s)
    s.add_argument("--rootfs", required=True, help="the target's root filesystem folder")
    s.add_argument("--prefix", default="/opt/edgesdk", help="deployment root on the target (default /opt/edgesdk)")
    unit_args(s, required=False)
    s.set_defaults(fn=cmd_stage)

    s = sub.add_parser("service", help="a hardened systemd unit that runs `edgesdk run` on ROOT/current")
    s.add_argument("--root", required=True, help="deployment root (as `install --root`)")
    s.add_argument("--out", required=True, help="unit file to write, e.g. edgesdk.service")
    unit_args(s, required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_service)

    s = sub.add_parser("rollback", help="switch current back to the previous slot")
    s.add_argument("--root", required=True)
    s.add_argument("--pubkey", help="key to verify the previous slot with (default ROOT/edgesdk.pub)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rollback)

    s = sub.add_parser("status", help="slots, current/previous, health reports, install history")
    s.add_argument("--root", required=True)
    s.add_argument("--pubkey", help="key to verify slots with (default ROOT/edgesdk.pub)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
