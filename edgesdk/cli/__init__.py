"""`edgesdk` command line: each subcommand parses arguments, calls one public function and prints.

One module per command group (data, workstation, line, measure, scale, device, demo, deploy, fleet), each
with add_commands(sub). Heavy modules (torch, onnx, numpy) are
imported inside the commands that need them, so `edgesdk --help` is quick and `edgesdk eval`,
`predict` and `run` work on a device with only the base install."""

from __future__ import annotations

import argparse
import logging
import sys


def command_groups() -> tuple:
    """The command-group modules, in --help order: build_parser calls each one's add_commands(sub)."""
    from edgesdk.cli import data, demo, deploy, device, fleet, line, measure, scale, workstation

    return (data, workstation, line, measure, scale, device, demo, deploy, fleet)


def _verbosity(p: argparse.ArgumentParser, default) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log what sources and sinks resolved (run: a line per frame)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bars or info lines: results, warnings and errors only",
    )


def _leaves(sub: argparse._SubParsersAction):
    """Every command's own parser (`device check`, not `device`)."""
    for parser in dict.fromkeys(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            yield from _leaves(nested[0])
        else:
            yield parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesdk", description=__doc__.splitlines()[0])
    _verbosity(p, False)
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in command_groups():
        group.add_commands(sub)
    # -v/-q after the command too (`edgesdk run ... -q`); SUPPRESS keeps a flag given before it.
    for leaf in _leaves(sub):
        if not {"-v", "-q", "--verbose", "--quiet"} & set(leaf._option_string_actions):
            _verbosity(leaf, argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("edgesdk").setLevel(logging.INFO if args.verbose else logging.WARNING)
    from edgesdk.images import pixel_limit
    from edgesdk.progress import quiet

    try:
        # --max-pixels of a command that reads images through sources or folders it does not pass a
        # limit to (predict, run, calibrate, export) holds every image it reads for the command's length.
        with quiet(args.quiet), pixel_limit(getattr(args, "max_pixels", None)):
            args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        # Our errors name the file and the problem; a traceback would bury that.
        print(f"edgesdk {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: say so (and what a command kept), 128 + SIGINT as shells do
        print(f"edgesdk {args.cmd}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    return 0
