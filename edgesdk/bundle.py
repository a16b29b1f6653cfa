"""A bundle is a folder: model.onnx (pre/post-processing inside) + manifest.json (+ parity.json).

Opening one verifies the schema version and the sha256 of every listed file, so an edited, truncated
or half-copied bundle is refused with a message that says which file and why. A detector opens it with
verify="runtime": the files only `adapt` and the parity checks read (the adapt statistics, features.onnx,
the parity frames: most of a PaDiM bundle's bytes) are verified when first read instead, not at every
start of the device process. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from edgesdk.spec import MANIFEST, Manifest, SpecError, sha256_file

MODEL_FILE = "model.onnx"
PARITY_FRAMES = "parity_frames.npy"  # (N, H, W, 3) uint8 held-out good frames, for verify/compare


class BundleError(SpecError):
    """The bundle folder is missing, incomplete or was changed after export."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    deferred: frozenset[str] = frozenset()  # listed files not hashed yet: verified when first read

    def verify_files(self, names: Iterable[str]) -> None:
        """Size and sha256 of each listed file NAMES against the manifest; BundleError naming the first
        that differs."""
        for name in names:
            f, entry = self.path / name, self.manifest.files[name]
            size = f.stat().st_size
            if size != entry.bytes:
                raise BundleError(f"{f}: {size} bytes, manifest says {entry.bytes} (truncated or replaced)")
            digest = sha256_file(f)
            if digest != entry.sha256:
                raise BundleError(
                    f"{f}: sha256 {digest[:12]}… does not match the manifest's "
                    f"{entry.sha256[:12]}… (file changed after export)"
                )

    def read_deferred(self, name: str) -> Path:
        """The path of listed file NAME, verified first if opening deferred it."""
        if name in self.deferred:
            self.verify_files([name])
        return self.path / name

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def onnx_sha256(self) -> str:
        return self.manifest.files[MODEL_FILE].sha256

    def parity_frames(self):
        """(N, H, W, 3) uint8 frames the export's parity check used (numpy array)."""
        import numpy as np

        if PARITY_FRAMES not in self.manifest.files or not (self.path / PARITY_FRAMES).is_file():
            raise BundleError(f"{self.path}: no {PARITY_FRAMES} (exported by an older edgesdk); re-export it")
        return np.load(self.read_deferred(PARITY_FRAMES), allow_pickle=False)

    @property
    def threshold(self) -> float:
        return float(self.manifest.threshold.value)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.manifest.input.height, self.manifest.input.width

    @classmethod
    def open(cls, path: str | Path, verify: bool | Literal["runtime"] = True) -> "Bundle":
        """VERIFY: True hashes every listed file, False none (the caller has just hashed them, or opted
        out), "runtime" every file but those only adapt and the parity checks read (deferred: hashed
        by read_deferred when first read)."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: bundle folder not found")
        if not (path / MANIFEST).is_file():
            raise BundleError(f"{path}: no {MANIFEST}; not a bundle, or an export that did not finish")
        manifest = Manifest.load(path / MANIFEST)  # file names checked: relative, no `..`
        if MODEL_FILE not in manifest.files:
            raise BundleError(f"{path / MANIFEST}: does not list {MODEL_FILE}")
        root = path.resolve()
        for name in manifest.files:
            f = path / name
            # A listed file is the bundle's own: a link (or a linked folder on its way) could make a
            # copy of the bundle read, or write, somewhere else.
            if f.is_symlink() or (f.exists() and root not in f.resolve().parents):
                raise BundleError(
                    f"{f}: listed in {MANIFEST} but a symbolic link or outside {path}; "
                    "a bundle's files must be plain files inside its folder"
                )
            if not f.is_file():
                raise BundleError(f"{f}: listed in {MANIFEST} but missing")
        b = cls(path, manifest, frozenset(_read_later(manifest) if verify == "runtime" else ()))
        if verify:
            b.verify_files(n for n in manifest.files if n not in b.deferred)
        return b


def _read_later(manifest: Manifest) -> set[str]:
    """Listed files a running detector never reads: adapt's statistics and features graph, the parity
    frames. Never model.onnx nor a JSON file (parity, drift references), whatever adapt's fields name."""
    named = (set(manifest.adapt.bundle_files()) if manifest.adapt else set()) | {PARITY_FRAMES}
    return {n for n in named if n != MODEL_FILE and not n.endswith(".json")}
