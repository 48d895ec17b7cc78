"""`emorl segment`: a folder of pictures in, per picture its segmentation as PNG files, and for the whole
run `segments.npz` and `segments.json`; an interrupted run continues where it stopped.

Shape legend: N pictures, K slots, D latent size, S×S the side the model sees.

The output folder:

    labels/NAME.png          the label map: a palette PNG whose pixel values are slot indices 0..K-1
    overlays/NAME.png        the picture tinted by each pixel's slot colour
    slots/NAME/slot_KK.png   each slot as RGBA: its component as colour, its mask as alpha
    segments.npz             names [N], labels uint8 [N, S, S], masks float32 [N, K, S, S],
                             loc and scale float32 [N, K, D] (no scale for Slot Attention)
    segments.json            the run (checkpoint, I, seed, palette) and per picture: its source, what was done
                             to it, and per slot area, mask sum, mean colour and bounding box
    parts/NAME.npz           one picture's arrays and figures, written after its PNGs: what a resumed run
                             keeps (a picture with a part file is done)
    segment-run.json         the checkpoint (SHA-256), config, I and seed the folder holds segments of

Every file is written atomically; the folder is locked while the command runs. Rerunning the command with
the same checkpoint and settings skips the pictures already done and rebuilds segments.npz/json for the
pictures given; other settings are refused rather than mixed into one folder.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from emorl_cli.config import config_to_dict
from emorl_cli.data.user_images import PictureSource, Preparation, check_readable, summarize_preparations
from emorl_cli.errors import DataError, InputError
from emorl_cli.evaluate.segmentation import Segmentation, check_batch_size, segment_batches, slot_statistics
from emorl_cli.evaluate.session import LoadedModel, file_sha256
from emorl_cli.files import atomic_path, atomic_write_json, ensure_writable_folder, json_safe
from emorl_cli.locks import lock_folder
from emorl_cli.training.memory import fit_inference_batch
from emorl_cli.viz.segments import PALETTE, write_segment_pictures

RUN_FILE = "segment-run.json"
PARTS = "parts"
WRITERS = 8  # threads writing pictures: each file is synced to the disk, and syncs overlap well
Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class SegmentResult:
    """What `segment_to_folder` did: pictures in all, done now, already done before (skipped), the files of
    the whole run, a note on how the pictures were prepared (None: none needed changing), and seconds."""

    out: Path
    total: int
    segmented: int
    skipped: int
    npz: Path
    json: Path
    preparation_note: Optional[str]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0


def run_settings(loaded: LoadedModel, refinement_iters: Optional[int], seed: int) -> dict[str, Any]:
    """What makes a folder's segments what they are: the weights, the model and data settings, I and seed."""
    assert loaded.checkpoint is not None
    cfg = config_to_dict(loaded.cfg)
    return {
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "model": cfg["model"],
        "data": {k: cfg["data"][k] for k in ("dataset", "image_size", "clevr_crop")},
        "refinement_iters": loaded.refinement_iters(refinement_iters),
        "seed": seed,
    }


def _claim_folder(out: Path, settings: dict[str, Any]) -> None:
    """Write segment-run.json, or refuse a folder holding segments of another checkpoint or settings."""
    path = out / RUN_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):
            held = None
        same = isinstance(held, dict) and all(
            held.get(k) == settings[k] for k in ("checkpoint_sha256", "model", "data", "refinement_iters", "seed")
        )
        if not same:
            what = "unreadable settings" if not isinstance(held, dict) else _difference(held, settings)
            raise InputError(
                f"{out} holds segments made with {what}; give another --out, or empty the folder to start over"
            )
    atomic_write_json(path, settings)


def _difference(held: dict[str, Any], settings: dict[str, Any]) -> str:
    if held.get("checkpoint_sha256") != settings["checkpoint_sha256"]:
        return f"another checkpoint ({held.get('checkpoint')})"
    parts = [f"{k} {held.get(k)!r}" for k in ("refinement_iters", "seed") if held.get(k) != settings[k]]
    return ", ".join(parts) if parts else "another config"


def _part_path(out: Path, name: str) -> Path:
    return out / PARTS / f"{name}.npz"


def _is_done(out: Path, source: PictureSource) -> bool:
    """A picture is done when its part file exists, reads, and was made from the same source."""
    path = _part_path(out, source.name)
    if not path.is_file():
        return False
    try:
        with np.load(path) as part:
            return str(part["origin"]) == source.origin
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False  # damaged (not an emorl write: those are atomic); made again


def _write_part(out: Path, source: PictureSource, result: Segmentation, i: int) -> None:
    item = result[i]
    figures = {
        "name": item.name,
        "source": source.origin,
        "preparation": item.preparation.to_dict(),
        "slots": slot_statistics(item.image, item.labels, item.masks),
    }
    arrays = {"labels": item.labels, "masks": item.masks, "loc": item.loc}
    if item.scale is not None:
        arrays["scale"] = item.scale
    with atomic_path(_part_path(out, source.name)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, origin=np.array(source.origin), figures=np.array(json.dumps(json_safe(figures))), **arrays)


def _write_picture(out: Path, source: PictureSource, result: Segmentation, i: int) -> None:
    """One picture's PNG files, then its part file (from then on it counts as done)."""
    item = result[i]
    write_segment_pictures(out, item.name, item.image, item.labels, item.masks, item.components)
    _write_part(out, source, result, i)


def _finish(pending: list[Future], progress: Progress) -> None:
    """Wait for a batch's pictures to be written (raising the first error), then report them."""
    for future in pending:
        future.result()
    if progress is not None and pending:
        progress(len(pending))


def _write_stacked_npz(path: Path, names: list[str], parts: list[Path]) -> None:
    """segments.npz from the part files, one array at a time and one picture at a time (memory: one part)."""
    with np.load(parts[0]) as first:
        keys = [k for k in ("labels", "masks", "loc", "scale") if k in first.files]
        templates = {k: first[k] for k in keys}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("names.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.array(names))
        for key in keys:
            template = templates[key]
            header = {
                "descr": np.lib.format.dtype_to_descr(template.dtype),
                "fortran_order": False,
                "shape": (len(parts), *template.shape),
            }
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                for part_path in parts:
                    with np.load(part_path) as part:
                        array = np.ascontiguousarray(part[key], dtype=template.dtype)
                    if array.shape != template.shape:
                        raise DataError(
                            f"{part_path} holds {key} of shape {list(array.shape)}, not {list(template.shape)}"
                        )
                    member.write(array.tobytes())


def _assemble(
    out: Path, sources: Sequence[PictureSource], settings: dict[str, Any]
) -> tuple[Path, Path, list[Preparation]]:
    """segments.npz and segments.json for `sources`, from their part files."""
    parts = [_part_path(out, s.name) for s in sources]
    pictures, preparations = [], []
    for path in parts:
        with np.load(path) as part:
            figures = json.loads(str(part["figures"]))
        pictures.append(figures)
        p = figures["preparation"]
        preparations.append(Preparation(tuple(p["original_size"]), tuple(p["crop"]), p["size"], p["method"]))  # type: ignore[arg-type]
    npz = out / "segments.npz"
    _write_stacked_npz(npz, [s.name for s in sources], parts)
    summary = {
        "checkpoint": settings["checkpoint"],
        "checkpoint_sha256": settings["checkpoint_sha256"],
        "refinement_iters": settings["refinement_iters"],
        "seed": settings["seed"],
        "slots": settings["model"]["K"],
        "image_size": settings["data"]["image_size"],
        "palette": PALETTE[: settings["model"]["K"]].tolist(),
        "coordinates": "pixels of the S×S picture the model saw; bbox is [x0, y0, x1, y1), x1 and y1 exclusive",
        "pictures": pictures,
    }
    path = out / "segments.json"
    atomic_write_json(path, summary)
    return npz, path, preparations


def segment_to_folder(
    loaded: LoadedModel,
    sources: Sequence[PictureSource],
    out: Path,
    *,
    refinement_iters: Optional[int] = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress = None,
) -> SegmentResult:
    """Segment `sources` into `out` (see the module docstring); pictures already done there are skipped.

    `progress` is called with the number of pictures finished (skipped ones first, at once).
    """
    started = time.perf_counter()
    if not sources:
        raise InputError("no pictures to segment; give image files, folders, globs or .h5 files")
    for source in sources:
        check_readable(source)  # a file that is no picture fails now, not after minutes of work
    fit_inference_batch(loaded, check_batch_size(batch_size), len(sources))  # nor a batch that cannot fit
    ensure_writable_folder(out, "output folder")
    with lock_folder(out, "emorl segment", advice="wait for it to finish or give another --out"):
        settings = run_settings(loaded, refinement_iters, seed)
        _claim_folder(out, settings)
        todo = [s for s in sources if not _is_done(out, s)]
        skipped = len(sources) - len(todo)
        if progress is not None and skipped:
            progress(skipped)
        by_name = {s.name: s for s in todo}
        # a picture's files are written by worker threads while the model runs on the next batch: writing
        # is mostly waiting for the disk (each file is synced), which threads overlap with each other
        pending: list[Future] = []
        with ThreadPoolExecutor(WRITERS, thread_name_prefix="emorl-segment-writer") as writers:
            try:
                batches = segment_batches(
                    loaded, todo, refinement_iters=refinement_iters, batch_size=batch_size, seed=seed
                )
                for result in batches:
                    _finish(pending, progress)  # the previous batch's files, before more are queued
                    pending = [
                        writers.submit(_write_picture, out, by_name[name], result, i)
                        for i, name in enumerate(result.names)
                    ]
                _finish(pending, progress)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        npz, json_path, preparations = _assemble(out, sources, settings)
    return SegmentResult(
        out=out,
        total=len(sources),
        segmented=len(todo),
        skipped=skipped,
        npz=npz,
        json=json_path,
        preparation_note=summarize_preparations(preparations),
        seconds=time.perf_counter() - started,
    )
