"""Roll a signed package out to a line's devices over the plant's MQTT broker, in waves that stop by
themselves at the first unhealthy wave, then show the whole fleet: `edgesdk rollout` and
`edgesdk fleet status`, from Python.

    python samples/fleet_rollout.py PACKAGE --key edgesdk.key --broker mqtt://broker:1883 --group line1 \\
        [--waves 1,50%,100%] [--url file:///srv/PACKAGE] [--rollback-on-halt]

Each device runs the agent (the same key's public half; no torch):
    edgesdk agent --broker mqtt://broker:1883 --group line1 --device-id cam3 --root /opt/edgesdk --pubkey edgesdk.pub"""

from __future__ import annotations

import argparse
import sys

from edgesdk.fleet.broker import parse_broker
from edgesdk.fleet.rollout import RolloutHalted, RolloutOptions, rollout
from edgesdk.fleet.status import fleet_status
from edgesdk.table import table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--key", required=True, help="the fleet's private key (it signed the package)")
    ap.add_argument("--broker", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--waves", default="1,50%,100%")
    ap.add_argument("--url", help="where devices fetch it (default: chunks over MQTT)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a wave waits for its devices")
    ap.add_argument("--rollback-on-halt", action="store_true")
    args = ap.parse_args()
    broker = parse_broker(args.broker)

    def progress(rows: list[dict], event: str) -> None:  # called whenever a device's row changes
        if event:
            print(f"-- {event}")
        for r in rows:
            print(
                f"   {r['device']:<12} wave {r['wave']}  {r['state']:<10} {r['version'] or '-':<8} "
                f"{(r['health'] or '')[:60]}"
            )

    opts = RolloutOptions(
        group=args.group,
        waves=args.waves,
        url=args.url,
        timeout_s=args.timeout,
        rollback_on_halt=args.rollback_on_halt,
        discover_s=2,
    )
    try:
        report, code = rollout(args.package, args.key, broker, opts, on_change=progress), 0
        print(f"rollout {report['release_id']} complete in {report['seconds']:.1f} s")
    except RolloutHalted as e:  # a wave went wrong: nobody else got it
        report, code = e.report, 1
        print(f"rollout {report['release_id']} {e}")
    per = report["messages"]
    print(
        f"broker messages: {per['published']} published, {per['received']} received by the rollout tool "
        f"for {per['devices']} device(s)"
    )

    fleet = fleet_status(broker, args.group, wait_s=2)
    print(
        table(
            fleet["devices"],
            ["device", "version", "previous", "last release", "result", "silent"],
            title=f"fleet {args.group} on {fleet['broker']}",
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
