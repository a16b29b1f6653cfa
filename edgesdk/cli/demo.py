"""`edgesdk demo`: sample data -> train -> export -> eval -> stream, with tables (edgesdk.demo)."""

from __future__ import annotations


def cmd_demo(args) -> None:
    from edgesdk.demo import MODELS, demo

    demo(
        args.out,
        categories=args.categories,
        quick=args.quick,
        full=args.full,
        models=tuple(args.models) if args.models else MODELS,
    )


def add_commands(sub) -> None:
    s = sub.add_parser("demo", help="sample data -> train -> export -> eval -> stream, with tables")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--categories", nargs="+")
    s.add_argument("--quick", action="store_true", help="small images and few of them (a smoke run)")
    s.add_argument(
        "--full", action="store_true", help="the student-teacher's and segmenter's full training budgets (README table)"
    )
    s.add_argument(
        "--models",
        nargs="+",
        choices=["padim", "patchcore", "stfpm", "segmenter"],
        help="default: all four (the segmenter on the first category only)",
    )
    s.set_defaults(fn=cmd_demo)
