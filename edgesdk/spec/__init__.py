"""What crosses a file boundary, as frozen dataclasses with loaders that say which file and field is
wrong: the bundle manifest (manifest.py), device profiles and build configs (device.py), the engine
sidecar (engine.py), and the typed-config machinery they share (typed.py). Standard library only:
the device runtime imports this. Import names from here; the modules are how it is arranged.
device.py and engine.py load when one of their names is first asked for: a process that only opens
bundles (the detector on ONNX Runtime) does not import them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgesdk.spec.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    FileEntry,
    InputSpec,
    Manifest,
    OutputSpec,
    Threshold,
    check_file_name,
    file_entry,
    source_name_problem,
)
from edgesdk.spec.typed import (
    COMPUTE_CAPABILITY,
    DEVICE_KINDS,
    MAX_DEPTH,
    NAME,
    PRECISIONS,
    RELEASE,
    RUNTIME_PLATFORM,
    RUNTIME_PYTHON,
    SHA256,
    TENSORRT_MODULES,
    VERSION,
    SpecError,
    from_mapping,
    load_json,
    load_toml,
    sha256_file,
)

if TYPE_CHECKING:
    from edgesdk.spec.device import MAX_WORKSPACE_MB, BuildConfig, DeviceProfile
    from edgesdk.spec.engine import BUILDER_FLAGS, ENGINE_SCHEMA, GPU_KEYS, EngineSidecar

_DEVICE = ("MAX_WORKSPACE_MB", "BuildConfig", "DeviceProfile")
_ENGINE = ("BUILDER_FLAGS", "ENGINE_SCHEMA", "GPU_KEYS", "EngineSidecar")


def __getattr__(name: str) -> Any:
    if name in _DEVICE:
        from edgesdk.spec import device as module
    elif name in _ENGINE:
        from edgesdk.spec import engine as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


__all__ = [
    "BUILDER_FLAGS",
    "COMPUTE_CAPABILITY",
    "DEVICE_KINDS",
    "ENGINE_SCHEMA",
    "GPU_KEYS",
    "MANIFEST",
    "MAX_DEPTH",
    "MAX_WORKSPACE_MB",
    "NAME",
    "PRECISIONS",
    "RELEASE",
    "RUNTIME_PLATFORM",
    "RUNTIME_PYTHON",
    "SCHEMA_VERSION",
    "SHA256",
    "TENSORRT_MODULES",
    "VERSION",
    "BuildConfig",
    "DeviceProfile",
    "EngineSidecar",
    "FileEntry",
    "InputSpec",
    "Manifest",
    "OutputSpec",
    "SpecError",
    "Threshold",
    "check_file_name",
    "file_entry",
    "from_mapping",
    "load_json",
    "load_toml",
    "sha256_file",
    "source_name_problem",
]
