"""`edgesdk train | export`: the workstation's half (torch). Flags and recipes merge in edgesdk.recipe
(resolve_train, resolve_export); these parse, call, and print one table."""

from __future__ import annotations

from edgesdk.cli._common import FORCE_HELP, max_pixels_arg, table


def cmd_train(args) -> None:
    from edgesdk.recipe import resolve_train
    from edgesdk.train import read_run, train

    req = resolve_train(
        args.recipe,
        {
            "model": args.model,
            "input_size": [args.size, args.size] if args.size else None,
            "backbone": args.backbone,
            "feature_dim": args.feature_dim,
            "coreset_ratio": args.coreset_ratio,
            "steps": args.steps,
            "seconds": args.seconds,
            "holdout": args.holdout,
            "k_sigma": args.k_sigma,
            "seed": args.seed,
            "camera": args.camera_augment,
            "backbone_weights": args.backbone_weights,
            "with_anomaly": args.with_anomaly,
        },
    )
    out = train(
        args.data,
        args.out,
        val=args.val,
        force=args.force,
        labels=args.labels,
        max_pixels=args.max_pixels,
        **req.kwargs(),
    )
    run = read_run(out)
    fit = run["fit"]
    print(
        table(
            [
                {
                    "run": str(out),
                    "model": run["model"],
                    "backbone": run["config"]["backbone"],
                    "fit images": run["data"]["n_fit"],
                    "held out": run["data"]["n_holdout"],
                    **(
                        {"bank": f"{fit['bank_size']} x {fit['feature_dim']} ({fit['bank_mb']} MB)"}
                        if "bank_size" in fit
                        else {}
                    ),
                    **({"steps": f"{fit['steps']} ({fit['stopped_by']})"} if "steps" in fit else {}),
                    **({"kinds": ", ".join(fit["kinds"])} if "kinds" in fit else {}),
                    "threshold": run["threshold"]["value"],
                    "threshold source": run["threshold"]["source"],
                    "fit s": run["timing_s"]["fit"],
                }
            ]
        )
    )


def cmd_export(args) -> None:
    from edgesdk.bundle import Bundle
    from edgesdk.compile.gate import report_table
    from edgesdk.compile.onnx import export_onnx
    from edgesdk.recipe import EXPORT_FLAGS, resolve_export

    opts = resolve_export(args.run, args.recipe, {k: getattr(args, k) for k in EXPORT_FLAGS})
    out = export_onnx(args.run, args.out, opts, force=args.force)
    b = Bundle.open(out)
    m = b.manifest.metrics
    par = m.get("parity_vs_torch") or m["float_graph_parity_vs_torch"]
    print(
        table(
            [
                {
                    "bundle": str(out),
                    "model": b.manifest.model["name"],
                    "precision": b.manifest.precision,
                    "opset": b.manifest.graph.get("opset"),
                    "onnx MB": b.manifest.files["model.onnx"].bytes / 1e6,
                    "threshold": b.threshold,
                    "parity score rel err": f"{par['score_max_rel_err']:.1e}",
                    "parity map rel err": f"{par['map_max_rel_err']:.1e}",
                }
            ]
        )
    )
    if "vs_float" in m:
        print(report_table(m["vs_float"], b.manifest.precision, b.manifest.calibration or {}))


def add_commands(sub) -> None:
    s = sub.add_parser("train", help="fit a model on good images -> run folder")
    s.add_argument("--recipe", help="export/NAME.toml (or a path): model, backbone, config; flags override it")
    s.add_argument(
        "--model", choices=["padim", "patchcore", "stfpm", "segmenter"], help="default: the recipe's, else padim"
    )
    s.add_argument("--data", required=True, help="MVTec category folder or a folder of good images")
    s.add_argument("--out", required=True)
    s.add_argument("--val", help="labelled folder (good/ + defect folders) for an F1-optimal threshold")
    s.add_argument("--labels", help="segmenter: labelled folder to learn from (good/, <kind>/, ground_truth/<kind>/)")
    s.add_argument(
        "--with-anomaly",
        metavar="RUN",
        help="segmenter: add this PatchCore run (same backbone) as a second head in one graph: known kinds "
        "are named, any other defect is flagged as unknown (the hybrid, docs/ZOO.md)",
    )
    s.add_argument("--backbone", choices=["efficientnet_lite0", "resnet18", "wide_resnet50_2"])
    s.add_argument("--backbone-weights", help="state dict for the backbone (torchvision's for the ResNets)")
    s.add_argument("--size", type=int, help="model input size (square), default 256")
    s.add_argument("--feature-dim", type=int)
    s.add_argument("--coreset-ratio", type=float, help="patchcore: share of fit patches kept in the bank")
    s.add_argument("--steps", type=int, help="stfpm, segmenter: training step budget")
    s.add_argument("--seconds", type=float, help="stfpm, segmenter: training time budget")
    s.add_argument("--holdout", type=float)
    s.add_argument("--k-sigma", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument(
        "--camera-augment",
        type=lambda v: v.split(","),
        metavar="KINDS",
        help="fit on each image again as the line's camera delivers it: mp4v, jpeg:Q (comma-separated)",
    )
    max_pixels_arg(s)
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("run"))
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("export", help="run folder -> verified ONNX bundle")
    s.add_argument("run")
    s.add_argument("--out", required=True)
    s.add_argument("--recipe", help="take export options from this recipe (default: the run's recipe)")
    s.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    s.add_argument(
        "--target",
        choices=["cpu", "tensorrt"],
        help="int8 layout: cpu = ONNX Runtime U8S8 (fast on x86/Arm CPUs), tensorrt = symmetric "
        "explicit quantization (+ calib.cache); fp16 needs tensorrt",
    )
    s.add_argument("--calib", help="folder of the line's good images to calibrate on (default: the run's fit images)")
    s.add_argument("--n-calib", type=int, help="calibration images used (default 64)")
    s.add_argument(
        "--calib-method",
        choices=["minmax", "entropy", "percentile", "search"],
        help="activation ranges; search = per tensor by its effect on the output (default for tensorrt int8)",
    )
    s.add_argument("--max-drop", type=float, help="largest image-AUROC drop vs float accepted (default 0.005)")
    s.add_argument("--val", help="labelled folder (good/, <defect>/) for the gate (default: the run's DATA/test)")
    s.add_argument("--opset", type=int, help="ONNX opset (default 18; 17 for TensorRT 8.5 on JetPack 5)")
    s.add_argument("--device", help="device profile name (e.g. xavier-nx): its TensorRT's newest opset caps --opset")
    s.add_argument("--force", action="store_true", help=FORCE_HELP.format("bundle"))
    max_pixels_arg(s)
    s.set_defaults(fn=cmd_export)
