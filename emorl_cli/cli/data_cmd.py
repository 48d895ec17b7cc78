"""`emorl data fetch|synth|info|verify`: parse, call one function of `emorl_cli.data`, render."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Table

from emorl_cli.cli import stopping
from emorl_cli.cli.console import console, err_console, is_interactive, print_table
from emorl_cli.cli.options import BackoffOpt, RetriesOpt, TimeoutOpt, image_side_check, in_range, seed_check
from emorl_cli.data.progress import human_bytes
from emorl_cli.data.registry import (
    CLEVRTEX_BASE_URL,
    CLEVRTEX_VARIANTS,
    MANIFEST_NAME,
    ZENODO_BASE_URL,
    ZENODO_RECORD_ID,
)
from emorl_cli.errors import DataError, InputError

app = typer.Typer(no_args_is_help=True)


class RichProgress:
    """`emorl_cli.data.progress.Progress` drawn with rich on a terminal; plain notes otherwise."""

    def __init__(self) -> None:
        self.live = is_interactive()
        self._bar: Optional[RichBar] = None
        self._task = None

    def start(self, description: str, total: Optional[int], *, unit: str = "bytes", completed: int = 0) -> None:
        self.finish()
        if not self.live:
            return
        if unit == "bytes":
            columns = [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns = [MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
        self._bar = RichBar(
            TextColumn("{task.description}"), BarColumn(), *columns, console=err_console, transient=False
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = None
        self._task = None

    def note(self, text: str) -> None:
        err_console.print(f"[yellow]{text}[/]", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- fetch


# Members listed one by one up to this many; beyond, one line per archive.
LIST_MEMBERS_UP_TO = 20


@app.command()
def fetch(
    zenodo: Annotated[
        bool,
        typer.Option("--zenodo", help=f"Download the EfficientMORL files from Zenodo (record {ZENODO_RECORD_ID})."),
    ] = False,
    clevrtex: Annotated[
        bool, typer.Option("--clevrtex", help="Download ClevrTex in its published folder layout (see --variant).")
    ] = False,
    variant: Annotated[
        Optional[list[str]],
        typer.Option(
            "--variant",
            help=f"With --clevrtex: this variant only (repeatable; default all: {', '.join(CLEVRTEX_VARIANTS)}).",
        ),
    ] = None,
    dest: Annotated[Path, typer.Option("--dest", help="Folder to put the files in.")] = Path("data"),
    only: Annotated[
        Optional[list[str]],
        typer.Option("--only", help="Fetch only this file of the record (repeatable), e.g. --only tetrominoes.h5."),
    ] = None,
    record: Annotated[str, typer.Option("--record", help="Zenodo record id.")] = ZENODO_RECORD_ID,
    base_url: Annotated[
        Optional[str],
        typer.Option(
            "--base-url",
            help=f"Server to download from, a mirror or a test server (default {ZENODO_BASE_URL} for --zenodo, "
            f"{CLEVRTEX_BASE_URL} for --clevrtex).",
        ),
    ] = None,
    retries: RetriesOpt = 5,
    timeout: TimeoutOpt = 60.0,
    backoff: BackoffOpt = 1.0,
    recheck: Annotated[
        bool, typer.Option("--recheck", help="Re-hash files the manifest vouches for; re-download any that changed.")
    ] = False,
) -> None:
    """Download the EfficientMORL datasets from Zenodo, or ClevrTex: resumable, verified, renamed into place only
    when whole.

    Writes a manifest (name, size, md5) next to the data; a second run downloads nothing.

    Example: emorl data fetch --zenodo --dest data --only tetrominoes.h5 --only tetrominoes_test.h5
    """
    if zenodo == clevrtex:
        raise InputError("give one source: --zenodo (the EfficientMORL .h5 files) or --clevrtex")
    stopping.on_stop(
        lambda: (
            f"the verified files in {dest} are kept and a partial download resumes where it stopped; run "
            f"`{stopping.rerun_command()}` again"
        )
    )
    transfer = {"retries": retries, "backoff_s": backoff, "timeout_s": timeout, "recheck": recheck}
    if zenodo:
        from emorl_cli.data.zenodo import FetchOptions, fetch_zenodo

        if variant:
            raise InputError(f"--variant {variant[0]} applies to --clevrtex only; pick Zenodo files with --only")
        opts = FetchOptions(record=record, base_url=base_url or ZENODO_BASE_URL, only=tuple(only or ()), **transfer)
        result = fetch_zenodo(dest, opts, RichProgress())
    else:
        from emorl_cli.data.clevrtex_fetch import ClevrTexFetchOptions, fetch_clevrtex

        if only or record != ZENODO_RECORD_ID:
            raise InputError("--only and --record apply to --zenodo only; pick ClevrTex variants with --variant")
        clevrtex_opts = ClevrTexFetchOptions(
            variants=tuple(variant or ()), base_url=base_url or CLEVRTEX_BASE_URL, **transfer
        )
        result = fetch_clevrtex(dest, clevrtex_opts, RichProgress())
    for name in result.downloaded:
        note = " (refetched after a checksum mismatch)" if name in result.refetched else ""
        console.print(_downloaded_line(name, result.checks.get(name, "md5"), note), highlight=False)
    if len(result.extracted) <= LIST_MEMBERS_UP_TO:
        for name in result.extracted:
            console.print(f"[green]✓[/] {name} extracted and verified")
    else:
        for archive, count in result.unpacked.items():
            console.print(f"[green]✓[/] {archive}: {count:,} files extracted and verified")
    for name in result.skipped:
        console.print(f"[dim]· {name} already verified, skipped[/]")
    console.print(f"manifest: {result.manifest}", soft_wrap=True, highlight=False)
    folders = result.h5_folders if zenodo else [result.dest]
    for folder in folders:
        console.print(f"use the data with --data-dir {folder}", soft_wrap=True, highlight=False)


def _downloaded_line(name: str, check: str, note: str) -> str:
    """What a download was checked against, said plainly: only a checksum the source published verifies."""
    if check in ("md5", "sha256", "git blob id"):
        return f"[green]✓[/] {name} downloaded and verified ({check}){note}"
    if check == "archive":
        return f"[green]✓[/] {name} downloaded and verified by the archive's own checksums (none published){note}"
    if check == "size":
        return f"[yellow]![/] {name} downloaded; only its size could be checked (the source publishes no md5 or sha256)"
    return f"[yellow]![/] {name} downloaded but not checked (the source publishes neither its size nor a checksum)"


# --------------------------------------------------------------------------------------------- synth


DEFAULT_SYNTH_TEST = 1_000  # test images `data synth` writes unless --test says otherwise


class SynthName(str, Enum):
    tetrominoes = "tetrominoes"
    multi_dsprites = "multi_dsprites"


@app.command()
def synth(
    name: Annotated[SynthName, typer.Argument(help="Which dataset to imitate.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the .h5 files into.")] = Path("data"),
    train: Annotated[
        int, typer.Option("--train", help="Training images (0: no training file).", callback=in_range("images", 0))
    ] = 10_000,
    test: Annotated[
        Optional[int],
        typer.Option(
            "--test",
            help=f"Test images (0: no test file; default {DEFAULT_SYNTH_TEST:,}). Not with --png: `emorl data "
            "import --split-test` makes the test split.",
            callback=in_range("images", 0),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same files.", callback=seed_check())
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace files that already exist.")] = False,
    png: Annotated[
        bool,
        typer.Option(
            "--png",
            help="Write the --train images as OUT/images/*.png and their label masks as OUT/labels/*.png "
            "(0 = background) instead of .h5 files: the input of `emorl data import … --masks`.",
        ),
    ] = False,
) -> None:
    """Generate a synthetic Tetrominoes or Multi-dSprites set in the Zenodo layout and file names.

    Any config for that dataset then works with --data-dir pointing at the folder. With --png, picture files
    for `emorl data import` instead.

    Example: emorl data synth tetrominoes --out data/synth --train 10000 --test 1000 --seed 0
    """
    from emorl_cli.data.registry import DATASETS
    from emorl_cli.data.synth import synthesize

    if png:
        from emorl_cli.data.synth_pngs import write_png_folders

        if test is not None:
            raise InputError(
                f"--test {test} does not apply with --png (it writes training pictures only); leave it out and "
                "choose the test share at import: emorl data import … --split-test 0.1"
            )

        stopping.on_stop(lambda: f"nothing was written into {out}; run `{stopping.rerun_command()}` again")
        folders = write_png_folders(name.value, out, train, seed, force=force, progress=RichProgress())
        console.print(
            f"[green]✓[/] {train:,} pictures in {folders['images']}, label masks in {folders['labels']}",
            soft_wrap=True,
            highlight=False,
        )
        console.print(
            f"import them with: emorl data import {folders['images']} --masks {folders['labels']} --out "
            f"{out / 'custom.h5'} --size {DATASETS[name.value].stored_size[0]}",
            soft_wrap=True,
            highlight=False,
        )
        return

    def kept() -> str:
        names = [DATASETS[name.value].file_for(s) for s, n in (("train", train), ("test", test)) if n > 0]
        done = [f for f in names if (out / f).is_file()]
        which = f"{', '.join(done)} in {out} (whole, in its manifest)" if done else f"no file in {out}"
        again = stopping.rerun_command("--force")
        return f"kept {which}, the file being written was discarded; write them with `{again}`"

    test = DEFAULT_SYNTH_TEST if test is None else test
    stopping.on_stop(kept)
    files = synthesize(name.value, out, train, test, seed, force=force, progress=RichProgress())
    for f in files:
        console.print(
            f"[green]✓[/] {f.path} — {f.num_images:,} images in group '{f.split}', {human_bytes(f.size_bytes)}",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"use the data with --data-dir {out}", soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------------------------- import


def _train_command(path: Path, size: int, entities: Optional[int]) -> str:
    """The `emorl train custom …` line that trains on an imported file (only the fields that differ), quoted
    for a shell; model.K is what the masks need, at most the limit of slots a model may have."""
    import shlex

    from emorl_cli.config import SIZE_LIMITS, load_config

    template = load_config("custom")
    sets = [f"data.data_dir={path.parent}"] if path.parent != template.data.data_dir else []
    if path.name != template.data.train_file or path.name != template.data.test_file:
        sets += [f"data.train_file={path.name}", f"data.test_file={path.name}"]
    if size != template.data.image_size:
        sets += [f"data.image_size={size}", f"model.input_size=[3,{size},{size}]"]
    if entities is not None and entities > template.model.K:
        sets.append(f"model.K={min(entities, SIZE_LIMITS['K'][0])}")
    return shlex.join(["emorl", "train", "custom", *(arg for item in sets for arg in ("--set", item))])


@app.command("import")
def import_images(
    folder: Annotated[Path, typer.Argument(help="Folder of PNG or JPEG pictures (any size).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .h5 file to write (both splits, train and test).")],
    size: Annotated[
        int,
        typer.Option("--size", help="Side S of the square images stored, in pixels.", callback=image_side_check()),
    ] = 64,
    masks: Annotated[
        Optional[Path],
        typer.Option(
            "--masks",
            help="Folder of integer label masks (PNG, same file names; 0 = background) for ARI. Optional.",
        ),
    ] = None,
    split_test: Annotated[
        float, typer.Option("--split-test", help="Share of the images kept for the test split, in (0, 1).")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/test split.", callback=seed_check())] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Pack a folder of pictures (and label masks) into an .h5 file to train on with the `custom` config.

    Each picture is centre-cropped to a square and resized to --size; masks are cropped the same way, resized
    nearest-neighbour and stored one-hot. Writes atomically and records the file in emorl-manifest.json.

    Example: emorl data import photos/ --out data/custom.h5 --size 64 --masks labels/
    """
    from emorl_cli.config import SIZE_LIMITS
    from emorl_cli.data.folder_import import import_folder

    result = import_folder(
        folder, out, size=size, masks=masks, test_fraction=split_test, seed=seed, force=force, progress=RichProgress()
    )
    s = result.image_size
    held = f"masks with up to {result.entities} entities (background included)" if result.entities else "no masks"
    console.print(
        f"[green]✓[/] {result.path} — {len(result.train_names):,} training and {len(result.test_names):,} test "
        f"images of {s}x{s}, {held}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"manifest: {result.path.parent / MANIFEST_NAME}", soft_wrap=True, highlight=False)
    limit = SIZE_LIMITS["K"][0]
    if result.entities and result.entities > limit:
        console.print(
            f"the masks hold up to {result.entities} entities, more than the {limit} slots a model may have: "
            f"train with model.K={limit}; FG-ARI is scored with a note (no image with more than {limit} objects "
            "can score 1)",
            soft_wrap=True,
            highlight=False,
        )
    elif result.entities:
        console.print(f"model.K must be at least {result.entities}", highlight=False)
    else:
        console.print(
            "choose model.K: at least the most objects in one picture + 1 (background); "
            "`emorl eval ari` needs masks (--masks), `emorl viz` and `emorl gifs` do not",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"train with: {_train_command(result.path, s, result.entities)}", soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------------------------- info


def _range(lo: Optional[float], hi: Optional[float], rows: int, total: int) -> str:
    if lo is None or hi is None:
        return ""
    text = f"{lo:g} … {hi:g}"
    return text + (f" (first {rows:,})" if rows and rows < total else "")


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="An .h5 dataset file.")],
    preview: Annotated[
        Optional[Path], typer.Option("--preview", help="Also write a PNG contact sheet of the first images.")
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count", help="Images on the contact sheet (at most 1024).", callback=in_range("images", 1, 1024)
        ),
    ] = 16,
) -> None:
    """Describe an .h5 dataset file: groups, shapes, dtypes, entities, value ranges (and a preview PNG).

    Example: emorl data info data/tetrominoes_test.h5 --preview preview.png
    """
    from emorl_cli.data.h5 import describe_file
    from emorl_cli.data.preview import contact_sheet
    from emorl_cli.files import ensure_writable_file

    if preview is not None:
        ensure_writable_file(preview, "--preview file")
    summary = describe_file(file)
    known = f", the '{summary.known_as}' file name" if summary.known_as else ""
    console.print(f"[bold]{summary.path}[/] — {human_bytes(summary.size_bytes)}{known}", highlight=False)
    if summary.attrs:
        console.print("attributes: " + ", ".join(f"{k}={v}" for k, v in summary.attrs.items()), highlight=False)
    table = Table(show_edge=False)
    for column in ("dataset", "shape", "dtype", "range", "values"):
        table.add_column(column)
    for ds in summary.datasets:
        values = ", ".join(f"{v:g}" for v in ds.unique) if ds.unique is not None else ""
        total = ds.shape[0] if ds.shape else 1
        table.add_row(ds.name, str(list(ds.shape)), ds.dtype, _range(ds.min, ds.max, ds.rows_read, total), values)
    print_table(table)
    for split, layout in summary.splits.items():
        h, w = layout.image_hw
        entities = f"{layout.mask_entities} mask entities" if layout.mask_entities else "no masks"
        factors = f"{layout.factor_dims} factor columns" if layout.factor_dims else "no factors"
        console.print(f"split [bold]{split}[/]: {layout.num_images:,} images of {h}x{w}, {entities}, {factors}")
    for problem in summary.problems:
        console.print(f"[yellow]problem:[/] {problem}", highlight=False)
    if preview is not None:
        written = contact_sheet(file, preview, count=count)
        console.print(f"[green]✓[/] preview written to {written}", soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------------------------- verify


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="A folder written by `emorl data fetch` or `emorl data synth`.")],
) -> None:
    """Re-check every file of a data folder against its manifest (size and md5); exit 1 naming each bad file.

    Example: emorl data verify data
    """
    from emorl_cli.data.manifest import verify_folder

    checks = verify_folder(folder, RichProgress())
    table = Table(show_edge=False)
    for column in ("file", "size", "status"):
        table.add_column(column)
    for c in checks:
        status = "[green]ok[/]" if c.ok else f"[red]{c.describe().split(': ', 1)[1]}[/]"
        table.add_row(c.name, human_bytes(c.expected_size), status)
    print_table(table)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise DataError(
            f"{len(bad)} of {len(checks)} files in {folder} failed verification: "
            + "; ".join(c.describe() for c in bad)
            + f" — fetch them again with `emorl data fetch --zenodo --dest {folder} --recheck` (ClevrTex: "
            "--clevrtex instead of --zenodo), or re-run `emorl data synth … --force`"
        )
    console.print(f"[green]✓[/] all {len(checks)} files in {folder} match the manifest", soft_wrap=True)
