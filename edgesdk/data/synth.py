"""Sample data: an MVTec-AD-layout set and a "conveyor" video made from real textures bundled in
scikit-image, so the whole product runs offline on a fresh machine.

Good parts vary the way a line does: the crop position shifts, the part rotates a little, lighting
gain/offset and a slow gradient change, and the sensor adds noise. Defects are painted with masks
that are exact: every changed pixel is in the mask and every mask pixel is changed.
Deterministic per seed (numpy Generator + OpenCV drawing, no global state).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgesdk.data.weave import THREAD_DEFECTS, WEAVES, render, thread_edit
from edgesdk.fsutil import SYNTH_MARKER, OutputError, atomic_dir, check_replaceable, temp_beside, write_json
from edgesdk.images import check_video

# Category -> (scikit-image loader name, BGR tint). Grayscale textures are tinted so that colour
# channels carry information, as on most real parts.
TEXTURES = {
    "brick": ("brick", (0.80, 0.90, 1.10)),
    "grass": ("grass", (0.85, 1.10, 0.90)),
    "gravel": ("gravel", (1.00, 1.00, 1.00)),
}
DEFECTS = ("scratch", "stain", "hole", "smudge")
# Woven categories (data/weave.py, rendered): thread defects painted in the cloth, holes and stains on top.
FABRIC_DEFECTS = ("broken", "float", "hole", "slub", "stain")
CATEGORIES = (*sorted(TEXTURES), *sorted(WEAVES))  # the order fixes each category's random stream


def defects(category: str) -> tuple[str, ...]:
    """The defect kinds a category's test set and labels hold."""
    return FABRIC_DEFECTS if category in WEAVES else DEFECTS


@dataclass(frozen=True)
class SynthConfig:
    size: int = 256  # output images are size x size
    n_train: int = 200  # PaDiM needs N > feature_dim for a well-conditioned covariance
    n_test_good: int = 20
    n_test_per_defect: int = 8
    seed: int = 0
    window: int = 256  # texture pixels seen by one image (then resized to `size`)
    n_labelled_per_defect: int = 5  # labels/<kind>/: a few labelled rejects per kind (the segmenter's data)
    n_labelled_good: int = 5


def texture(category: str) -> np.ndarray:
    """Full-size texture (512, 512, 3) uint8 BGR for a category."""
    if category in WEAVES:
        return render(WEAVES[category])
    if category not in TEXTURES:
        raise ValueError(f"unknown category {category!r}; choose from {list(CATEGORIES)}")
    import skimage.data  # heavy import, only needed here

    name, tint = TEXTURES[category]
    gray = getattr(skimage.data, name)().astype(np.float32)
    return np.clip(gray[..., None] * np.asarray(tint, np.float32), 0, 255).astype(np.uint8)


def view(tex: np.ndarray, cx: float, cy: float, angle: float, cfg: SynthConfig) -> np.ndarray:
    """A rotated `window` crop of the texture centred at (cx, cy), resized to cfg.size."""
    scale = cfg.size / cfg.window
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[:, 2] += np.array((cfg.size / 2 - cx, cfg.size / 2 - cy))
    return cv2.warpAffine(tex, m, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting gain/offset, a slow horizontal gradient, and sensor noise."""
    h, w = img.shape[:2]
    gain = rng.uniform(0.92, 1.08)
    offset = rng.uniform(-8, 8)
    ramp = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-6, 6)
    noise = rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) * gain + offset + ramp + noise, 0, 255).astype(np.uint8)


def good_image(tex: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    half = cfg.window / 2 + 8
    cx, cy = rng.uniform(half, tex.shape[1] - half), rng.uniform(half, tex.shape[0] - half)
    return photometric(view(tex, cx, cy, rng.uniform(-3, 3), cfg), rng)


def defect_image(
    category: str, tex: np.ndarray, kind: str, rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(defective image, exact mask uint8 {0,255}) of KIND on a fresh view of the category's texture.
    Thread defects are rendered into the cloth (the same view and lighting with and without the
    defect; the mask is every pixel that differs); the others are painted on a good image."""
    if kind not in THREAD_DEFECTS:
        return paint_defect(good_image(tex, rng, cfg), kind, rng)
    if category not in WEAVES:
        raise ValueError(f"defect kind {kind!r} needs a woven category ({sorted(WEAVES)}), not {category!r}")
    half = cfg.window / 2 + 8
    cx, cy, angle = rng.uniform(half, tex.shape[1] - half), rng.uniform(half, tex.shape[0] - half), rng.uniform(-3, 3)
    dx, dy = rng.uniform(-0.25, 0.25, 2) * cfg.window  # the defect lies in the middle half of the view
    edited = render(WEAVES[category], thread_edit(WEAVES[category], kind, cx + dx, cy + dy, rng))
    state = rng.bit_generator.state
    good = photometric(view(tex, cx, cy, angle, cfg), rng)
    rng.bit_generator.state = state  # the same lighting and noise on both
    img = photometric(view(edited, cx, cy, angle, cfg), rng)
    return img, np.where(np.any(img != good, axis=2), 255, 0).astype(np.uint8)


def paint_defect(
    img: np.ndarray, kind: str, rng: np.random.Generator, center: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image with the defect, mask uint8 {0,255}). Sizes scale with the image."""
    h, w = img.shape[:2]
    s = w / 256.0
    cx, cy = center if center is not None else (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h)
    mask = np.zeros((h, w), np.uint8)
    out = img.astype(np.float32)
    if kind == "scratch":
        pts = [(cx, cy)]
        ang = rng.uniform(0, np.pi)
        for _ in range(3):
            ang += rng.uniform(-0.4, 0.4)
            step = rng.uniform(12, 24) * s
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        # 3-5 px wide at 256 px (MVTec scale); 2 px lines vanish among grass blades for PaDiM.
        cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 255, max(1, round(rng.uniform(3, 5) * s)))
        value = rng.choice([25.0, 235.0])
        m = mask > 0
        out[m] = 0.25 * out[m] + 0.75 * value
    elif kind == "stain":
        axes = (max(2, int(rng.uniform(8, 16) * s)), max(2, int(rng.uniform(5, 11) * s)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 255, -1)
        m = mask > 0
        tint = np.array(rng.choice([(0.45, 0.75, 1.35), (1.4, 0.8, 0.5)]), np.float32)
        out[m] = np.clip(out[m] * tint + 10, 0, 255)
    elif kind == "hole":
        r = max(2, int(rng.uniform(6, 10) * s))
        cv2.circle(mask, (int(cx), int(cy)), r, 255, -1)
        m = mask > 0
        out[m] = rng.uniform(5, 20) + rng.normal(0, 2, (int(m.sum()), 3))
    elif kind == "smudge":
        r = max(3, int(rng.uniform(10, 16) * s))
        cv2.circle(mask, (int(cx), int(cy)), r, 255, -1)
        m = mask > 0
        blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=5 * s).astype(np.float32)
        out[m] = blurred[m] * 1.15 + 12
    else:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECTS}")
    out = np.clip(out, 0, 255).astype(np.uint8)
    # Keep the mask exact: drop mask pixels that painting left (rarely) unchanged after rounding.
    changed = np.any(out != img, axis=2)
    out[~(mask > 0)] = img[~(mask > 0)]
    return out, np.where((mask > 0) & changed, 255, 0).astype(np.uint8)


def seeds(cfg: SynthConfig, category: str) -> dict[str, list[int]]:
    """The random stream of each part of a category: the labelled folder draws from its own stream,
    so none of its images can repeat one of the test set's."""
    i = CATEGORIES.index(category)
    return {"dataset": [cfg.seed, i], "labels": [cfg.seed, i, 1]}


def write_category(root: Path, category: str, cfg: SynthConfig, force: bool = False) -> dict:
    """Writes root/category in MVTec AD layout (atomically) and returns a summary dict: train/good,
    test/<kind>, ground_truth/<kind>, and labels/ (good/, <kind>/, ground_truth/<kind>/: a few labelled
    images per kind for supervised models, none of them in the test set). An existing root/category is
    replaced only if empty or made by this function (its SYNTH_MARKER), or with FORCE."""
    tex = texture(category)
    rng = np.random.default_rng(seeds(cfg, category)["dataset"])
    counts = {}
    with atomic_dir(root / category, kind="synth", force=force) as out:

        def save(rel: str, img: np.ndarray) -> None:
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), img):
                raise OSError(f"{path}: could not write image")

        for i in range(cfg.n_train):
            save(f"train/good/{i:03d}.png", good_image(tex, rng, cfg))
        for i in range(cfg.n_test_good):
            save(f"test/good/{i:03d}.png", good_image(tex, rng, cfg))
        counts = {"train/good": cfg.n_train, "test/good": cfg.n_test_good}
        for kind in defects(category):
            for i in range(cfg.n_test_per_defect):
                img, mask = defect_image(category, tex, kind, rng, cfg)
                save(f"test/{kind}/{i:03d}.png", img)
                save(f"ground_truth/{kind}/{i:03d}_mask.png", mask)
            counts[f"test/{kind}"] = cfg.n_test_per_defect
        lrng = np.random.default_rng(seeds(cfg, category)["labels"])
        for i in range(cfg.n_labelled_good if cfg.n_labelled_per_defect else 0):
            save(f"labels/good/{i:03d}.png", good_image(tex, lrng, cfg))
        for kind in defects(category) if cfg.n_labelled_per_defect else ():
            for i in range(cfg.n_labelled_per_defect):
                img, mask = defect_image(category, tex, kind, lrng, cfg)
                save(f"labels/{kind}/{i:03d}.png", img)
                save(f"labels/ground_truth/{kind}/{i:03d}_mask.png", mask)
        counts["labels (per kind)"] = cfg.n_labelled_per_defect
        write_json(out / SYNTH_MARKER, {"category": category, "config": vars(cfg), "counts": counts})
    return counts


class Conveyor:
    """The conveyor: the texture slides past a fixed camera, one pass every `frames_per_pass` frames,
    and defects fixed on the part travel across the frame (entering right, leaving left).

    `schedule` is ((start, end, kind), ...) in frames of a pass. With `cycle` the schedule repeats
    every pass and the kinds rotate through DEFECTS (an endless line, `synth://conveyor`); without
    it, frames after the first pass are good. Iterating yields (BGR image, truth record) forever."""

    def __init__(
        self,
        category: str,
        cfg: SynthConfig = SynthConfig(),
        frames_per_pass: int = 60,
        schedule: tuple[tuple[int, int, str], ...] = ((18, 26, "hole"), (38, 46, "stain")),
        cycle: bool = False,
    ):
        self.tex, self.cfg, self.n, self.schedule, self.cycle = texture(category), cfg, frames_per_pass, schedule, cycle
        self.rng = np.random.default_rng([cfg.seed, 99, CATEGORIES.index(category)])
        self.speed = (self.tex.shape[1] - cfg.window - 32) / frames_per_pass  # texture px per frame
        self.x0, self.cy = cfg.window / 2 + 16, self.tex.shape[0] / 2

    def _defect(self, t: int) -> tuple[int, int, str] | None:
        k, u = divmod(t, self.n)
        if k and not self.cycle:
            return None
        for start, end, kind in self.schedule:
            if start <= u < end:
                kind = DEFECTS[(DEFECTS.index(kind) + k * len(self.schedule)) % len(DEFECTS)] if k else kind
                return k * self.n + start, k * self.n + end, kind
        return None

    def __iter__(self):
        t = 0
        while True:
            img = photometric(view(self.tex, self.x0 + self.speed * (t % self.n), self.cy, 0.0, self.cfg), self.rng)
            record = {"frame_id": t, "is_anomalous": False, "defect": None, "bbox": None}
            if (d := self._defect(t)) is not None:
                start, end, kind = d
                frac = 0.8 - 0.6 * (t - start) / max(1, end - start - 1)
                img, mask = paint_defect(
                    img,
                    kind,
                    np.random.default_rng([self.cfg.seed, start]),
                    center=(frac * self.cfg.size, 0.5 * self.cfg.size),
                )
                x, y, w, h = cv2.boundingRect(mask)
                record.update(is_anomalous=True, defect=kind, bbox=[x, y, x + w, y + h])
            yield img, record
            t += 1


def write_conveyor(
    path: Path,
    category: str,
    cfg: SynthConfig,
    n_frames: int = 60,
    fps: float = 15.0,
    defect_frames: tuple[tuple[int, int, str], ...] = ((18, 26, "hole"), (38, 46, "stain")),
) -> dict:
    """One pass of the conveyor as a video. Ground truth per frame goes to <path>.json. Returns that dict.
    The video is written beside PATH and read back before it takes the name: cv2.VideoWriter reports
    no failed write, and a video cut short by a full disk would sit under a truth listing every frame.
    An error or Ctrl-C on the way leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Lossless FFV1 by default: the frames then match the PNG training images, as a line's frames
    # match images captured through the same camera pipeline. (mp4v at ~36 dB PSNR blurs the
    # texture enough to shift every score: train on what the camera really delivers.)
    fourcc = "FFV1" if path.suffix.lower() in (".mkv", ".avi") else "mp4v"
    frames = []
    # The temporary name ends in the extension: OpenCV picks the container by it.
    with temp_beside(path, suffix=f".tmp{path.suffix}") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*fourcc), fps, (cfg.size, cfg.size))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV could not open a {fourcc} video writer")
        try:
            for img, record in itertools.islice(Conveyor(category, cfg, n_frames, defect_frames), n_frames):
                writer.write(img)
                frames.append(record)
        finally:
            writer.release()
        check_video(tmp, len(frames), path)
        # the truth first: it is what marks the pair as ours, so a run stopped between the two
        # writes leaves a pair the next run recognises and replaces, never a video it must refuse
        truth = {"video": path.name, "category": category, "fps": fps, "size": cfg.size, "frames": frames}
        write_json(path.with_suffix(".json"), truth)
        tmp.replace(path)
    return truth


def _not_conveyor(path: Path) -> str | None:
    """Why the conveyor video PATH and its truth JSON are not ones write_conveyor made (None: they are,
    or neither exists)."""
    truth = path.with_suffix(".json")
    if not any(os.path.lexists(p) for p in (path, truth)):
        return None
    try:
        meta = json.loads(truth.read_text())
    except FileNotFoundError:
        return f"it has no {truth.name} beside it, so it is not a conveyor video made by `edgesdk data synth`"
    except (OSError, ValueError) as e:
        return f"{truth.name} is not readable JSON ({e})"
    keys = ("video", "category", "fps", "size", "frames")
    if not (isinstance(meta, dict) and all(k in meta for k in keys) and meta["video"] == path.name):
        return f"{truth.name} is not the ground truth `edgesdk data synth` writes for {path.name}"
    return None


def synth_dataset(
    out: str | Path,
    categories: list[str] | None = None,
    cfg: SynthConfig = SynthConfig(),
    video: bool = True,
    force: bool = False,
) -> dict:
    """Writes OUT/<category>/... for each category and OUT/conveyor_<first category>.mkv (+ .json).
    An existing OUT/<category>, or conveyor video and JSON, is replaced only if this function made it
    (or with FORCE)."""
    out = Path(out)
    categories = categories or sorted(TEXTURES)
    for cat in categories:  # refuse before any category is written, not half-way
        check_replaceable(out / cat, "synth", force=force)
    conveyor = out / f"conveyor_{categories[0]}.mkv"
    if video and not force and (why := _not_conveyor(conveyor)):
        raise OutputError(f"{conveyor}: not replaced: {why}; choose a new folder (or --force to replace it)")
    summary = {cat: write_category(out, cat, cfg, force) for cat in categories}
    if video:
        write_conveyor(conveyor, categories[0], cfg)
    return summary
