"""`edgesdk data synth`: the sample data set (MVTec AD layout) and the conveyor video."""

from __future__ import annotations

from edgesdk.cli._common import table


def cmd_synth(args) -> None:
    from edgesdk.data.synth import TEXTURES, SynthConfig, synth_dataset

    cfg = SynthConfig(
        size=args.size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        seed=args.seed,
        n_labelled_per_defect=args.n_labelled_per_defect,
    )
    summary = synth_dataset(
        args.out, args.categories or sorted(TEXTURES), cfg, video=not args.no_video, force=args.force
    )
    print(table([{"category": c, **counts} for c, counts in summary.items()], title=f"sample data -> {args.out}"))


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("synth", help="sample data set in MVTec AD layout + conveyor video")
    s.add_argument("out")
    s.add_argument("--categories", nargs="+", help="default: brick grass gravel; woven fabrics: weave twill")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--n-train", type=int, default=200)
    s.add_argument("--n-test-good", type=int, default=20)
    s.add_argument("--n-test-per-defect", type=int, default=8)
    s.add_argument(
        "--n-labelled-per-defect",
        type=int,
        default=5,
        help="labelled images per defect kind in CATEGORY/labels/ (0: no labelled folder)",
    )
    s.add_argument("--no-video", action="store_true")
    s.add_argument("--force", action="store_true", help="replace category folders this command did not make")
    s.set_defaults(fn=cmd_synth)
