"""Measuring bundles, numpy + OpenCV only (never torch at import): metrics.py (AUROC, F1, latency
statistics), timing.py (the one timing loop), benchmark.py (`edgesdk bench`), compare.py (parity of
two runners or bundles), evaluate.py (`edgesdk eval`)."""
