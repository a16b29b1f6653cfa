"""`edgesdk agent | rollout | fleet status | fleet forget`: parse, call one edgesdk.fleet function, print
one table (or --json)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from edgesdk.cli._common import emit, positive_float, table

COLUMNS = ["device", "wave", "state", "version", "health", "seconds"]


def _short(rows: list[dict], width: int = 70) -> list[dict]:
    return [{**r, "health": (r.get("health") or "")[:width]} for r in rows]


def cmd_agent(args) -> None:
    from edgesdk.fleet.agent import Agent, AgentOptions
    from edgesdk.fleet.broker import broker_from_args

    logging.getLogger("edgesdk.fleet").setLevel(logging.INFO)
    opts = AgentOptions(
        group=args.group,
        device_id=args.device_id,
        root=Path(args.root),
        pubkey=Path(args.pubkey),
        golden=args.golden,
        device=args.device,
        keep=args.keep,
        max_latency_ms=args.max_latency_ms,
        heartbeat_s=args.heartbeat,
        fetch_timeout_s=args.fetch_timeout,
    )
    agent = Agent(broker_from_args(args), opts)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())  # systemd stop: finish the install under way, say goodbye
    print(
        f"edgesdk agent {args.group}/{args.device_id} ({agent.profile}) on {agent.link.opts.uri}, root {args.root}",
        file=sys.stderr,
        flush=True,
    )
    try:
        agent.run(args.run_for, stop)
    except KeyboardInterrupt:  # Ctrl-C: run() has already said goodbye on its way out
        pass


def cmd_rollout(args) -> None:
    from edgesdk.deploy.keys import read_passphrase
    from edgesdk.fleet.broker import broker_from_args
    from edgesdk.fleet.rollout import RolloutHalted, RolloutOptions, rollout
    from edgesdk.fsutil import write_json

    opts = RolloutOptions(
        group=args.group,
        waves=args.waves,
        max_failures=args.max_failures,
        timeout_s=args.timeout,
        url=args.url,
        chunk_kb=args.chunk_kb,
        rollback_on_halt=args.rollback_on_halt,
        devices=tuple(d for d in (args.devices or "").split(",") if d),
        discover_s=args.discover,
        expires_h=args.expires,
        release_id=args.release_id or "",
        allow_downgrade=args.allow_downgrade,
    )
    live = sys.stdout.isatty() and not args.json

    def on_change(rows, event):
        if args.json:
            return
        if live:
            print("\x1b[H\x1b[2J" + table(_short(rows), COLUMNS, title=event or "rollout"), flush=True)
        elif event:
            print(f"-- {event}", flush=True)
            print(table(_short(rows), COLUMNS), flush=True)

    halted = None
    try:
        report = rollout(
            args.package,
            args.key,
            broker_from_args(args),
            opts,
            read_passphrase(args.passphrase_file),
            on_change=on_change,
        )
    except RolloutHalted as e:
        report, halted = e.report, e
    out = Path(args.report or f"rollout-{report['release_id']}.json")
    write_json(out, report)
    title = (
        f"{report['result']}: {report['release_id']} to {report['group']} "
        f"({len(report['waves'])} wave(s), {report['seconds']:.1f} s); report {out}"
    )
    emit(args, report, table(_short(report["devices"]), COLUMNS, title=title))
    if halted is not None:
        raise halted


def cmd_status(args) -> None:
    from edgesdk.fleet.broker import broker_from_args
    from edgesdk.fleet.status import fleet_status

    r = fleet_status(broker_from_args(args), args.group, args.wait)
    cols = [
        "group",
        "device",
        "profile",
        "online",
        "version",
        "previous",
        "state",
        "last release",
        "result",
        "heartbeat s",
        "silent",
    ]
    text = table(
        r["devices"],
        cols,
        title=f"{r['broker']}: {len(r['devices'])} device(s)" + (f" in group {r['group']}" if r["group"] else ""),
    )
    notes = [f"{d['device']}: {d['result']}: {d['why']}" for d in r["devices"] if d["why"]]
    notes += [f"{d['device']}: silent: {d['silent_why']}" for d in r["devices"] if d["silent"]]
    notes += [
        f"{d['device']}: ignored {d['rejected']} message(s) not signed by the fleet key or malformed "
        "(see --json: rejected)"
        for d in r["devices"]
        if d["rejected"]
    ]
    emit(args, r, text + "".join(f"\n{n}" for n in notes))


def cmd_forget(args) -> None:
    from edgesdk.fleet.broker import broker_from_args
    from edgesdk.fleet.status import forget

    forget(broker_from_args(args), args.group, args.device_id)
    print(f"cleared the retained state, online and cmd topics of {args.group}/{args.device_id}")


def add_commands(sub) -> None:
    """Register the fleet commands on edgesdk.cli's subparsers."""
    from edgesdk.fleet.broker import add_broker_args

    s = sub.add_parser("agent", help="device agent: install signed releases from the plant's MQTT broker")
    add_broker_args(s)
    s.add_argument("--device-id", required=True, help="this device's id in the group (letters, digits, '._-')")
    s.add_argument("--group", required=True, help="the group (a line, a plant) whose releases it follows")
    s.add_argument("--root", required=True, help="deployment root (as for `edgesdk install`)")
    s.add_argument("--pubkey", required=True, help="the fleet's public key: releases and packages must verify")
    s.add_argument("--golden", help="this line's golden set for the health check (replaces the package's)")
    s.add_argument("--device", help="device profile (default: detect this machine)")
    s.add_argument("--keep", type=int, default=3, help="slots kept, current and previous included (default 3)")
    s.add_argument("--max-latency-ms", type=positive_float, help="health check: p50 latency budget")
    s.add_argument("--heartbeat", type=positive_float, default=30.0, help="seconds between state reports (default 30)")
    s.add_argument(
        "--fetch-timeout", type=positive_float, default=300.0, help="seconds to fetch a package (default 300)"
    )
    s.add_argument("--run-for", type=positive_float, help="exit after this many seconds (default: run until stopped)")
    s.set_defaults(fn=cmd_agent)

    s = sub.add_parser("rollout", help="roll a signed package out to a group in waves; halt when a wave fails")
    s.add_argument("package")
    add_broker_args(s)
    s.add_argument("--group", required=True)
    s.add_argument("--key", required=True, help="the fleet's private key (signs the release messages)")
    s.add_argument("--passphrase-file", help="passphrase of an encrypted key")
    s.add_argument(
        "--waves", default="1,10%,50%,100%", help="cumulative device counts or percentages (default 1,10%%,50%%,100%%)"
    )
    s.add_argument("--max-failures", type=int, default=0, help="failed or silent devices tolerated (default 0)")
    s.add_argument(
        "--timeout",
        type=positive_float,
        default=1200.0,
        help="seconds each wave waits for its devices (default 1200: engine builds take minutes)",
    )
    s.add_argument("--rollback-on-halt", action="store_true", help="on halt, the wave's devices roll back")
    s.add_argument(
        "--url", help="where devices fetch the package: file:///PATH or http(s)://... (default: chunks over MQTT)"
    )
    s.add_argument("--chunk-kb", type=int, default=256, help="chunk size over MQTT (default 256 KiB)")
    s.add_argument(
        "--devices",
        help="comma-separated device ids, in wave order (default: every device with a state in the group, sorted)",
    )
    s.add_argument("--discover", type=positive_float, default=3.0, help="seconds to gather device states (default 3)")
    s.add_argument(
        "--expires", type=positive_float, default=72.0, help="hours a device may still start the release (default 72)"
    )
    s.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="devices install it even when they run a newer version (a fleet-wide step back)",
    )
    s.add_argument("--release-id", help="default NAME-VERSION-UTCTIME")
    s.add_argument("--report", help="JSON report (default rollout-RELEASE.json)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_rollout)

    fleet = sub.add_parser("fleet", help="the fleet's state on the broker").add_subparsers(
        dest="fleet_cmd", required=True
    )
    s = fleet.add_parser("status", help="every device's retained state: versions, failures, silence")
    add_broker_args(s)
    s.add_argument("--group", help="one group (default: every group)")
    s.add_argument("--wait", type=positive_float, default=3.0, help="seconds to gather retained states (default 3)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    s = fleet.add_parser("forget", help="clear a retired device's retained topics")
    add_broker_args(s)
    s.add_argument("--group", required=True)
    s.add_argument("--device-id", required=True)
    s.set_defaults(fn=cmd_forget)
