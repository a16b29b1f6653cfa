"""The device's stream loop: detector.py (bundle -> per-frame verdicts), pipeline.py (source ->
detector -> sinks, threaded), handoff.py (its queues), calibrate.py (threshold on the line's own
frames), soak.py (memory over a long run). No torch. Import the modules themselves: this package
imports nothing, so `import edgesdk.stream.detector` stays cheap."""
