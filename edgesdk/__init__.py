"""edgesdk: anomaly detection from a PyTorch workstation to Jetson-class devices.

The public API is `from edgesdk import Detector, DetectorOptions, Bundle`. Each name is imported on
first use (PEP 562 module __getattr__), so `import edgesdk` stays cheap: no OpenCV, no ONNX Runtime,
no numpy until a name is asked for. The rooms are mapped in docs/ARCHITECTURE.md."""

__version__ = "0.1.0"

__all__ = ["Bundle", "Detector", "DetectorOptions", "__version__"]


def __getattr__(name: str):
    if name in ("Detector", "DetectorOptions"):
        from edgesdk.stream import detector

        return getattr(detector, name)
    if name == "Bundle":
        from edgesdk.bundle import Bundle

        return Bundle
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
