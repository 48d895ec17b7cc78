"""`emorl sweep` (plan, names, resume, skip, interrupt) and `emorl report` (mean ± std, missing runs, plot)."""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY, set_options, subprocess_env
from PIL import Image

from emorl_cli.config import config_to_dict, load_config
from emorl_cli.data.synth import synthesize
from emorl_cli.errors import InputError
from emorl_cli.experiments.report import Mark, build_report, cell, mean_std, table_columns, table_rows, to_csv
from emorl_cli.experiments.sweep import is_finished, parse_grid, parse_seeds, plan_runs, short_keys, split_values
from emorl_cli.training.run_logs import eval_rows
from emorl_cli.training.rundir import RunDir

# ------------------------------------------------------------------------------------------------ plan


def test_seeds_accept_ranges_and_lists():
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds("1,3") == [1, 3]
    assert parse_seeds("1-2,7,2") == [1, 2, 7]
    for bad in ("", "a", "4-1", "1-", "1..3"):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)


def test_grid_values_split_on_top_level_commas_only():
    assert split_values("7e-4,1e-3") == ["7e-4", "1e-3"]
    assert split_values("[[-1, 1]],[[-1, 0], [500, 1]]") == ["[[-1, 1]]", "[[-1, 0], [500, 1]]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_grid(["training.lr=7e-4,1e-3", "model.K=4"]) == [("training.lr", ["7e-4", "1e-3"]), ("model.K", ["4"])]
    for bad, phrase in (
        ("lr=1", "section.field"),
        ("training.lr", "section.field"),
        ("training.lr=1,", "empty value"),
        ("training.seed=1,2", "--seeds"),
    ):
        with pytest.raises(InputError, match=phrase):
            parse_grid([bad])
    with pytest.raises(InputError, match="twice"):
        parse_grid(["training.lr=1", "training.lr=2"])


def test_run_names_list_each_runs_overrides_grid_first():
    runs = plan_runs([1, 2], parse_grid(["training.lr=7e-4,1e-3"]))
    assert [r.name for r in runs] == ["lr=7e-4,seed=1", "lr=7e-4,seed=2", "lr=1e-3,seed=1", "lr=1e-3,seed=2"]
    assert runs[1].overrides == ("training.lr=7e-4", "training.seed=2")
    curriculum = plan_runs([3], parse_grid(["training.refinement_curriculum=[[-1, 1]]"]))
    assert curriculum[0].name == "refinement_curriculum=[[-1_1]],seed=3"  # no '/', ' ' or ',' inside a value
    assert short_keys(["model.K", "eval.batch_size", "training.batch_size"]) == {
        "model.K": "K",
        "eval.batch_size": "eval.batch_size",
        "training.batch_size": "training.batch_size",
    }


def test_a_run_is_finished_for_its_iters_or_its_time_budget(tmp_path):
    cfg = load_config("demo", ["training.iters=40"])
    run = RunDir(tmp_path)
    assert not is_finished(tmp_path, cfg)
    run.finished.write_text(json.dumps({"step": 40, "reason": "iters", "seconds": 10}))
    assert is_finished(tmp_path, cfg)
    assert not is_finished(tmp_path, load_config("demo", ["training.iters=80"]))  # asked for more steps
    run.finished.write_text(json.dumps({"step": 12, "reason": "time budget", "seconds": 61}))
    assert is_finished(tmp_path, load_config("demo", ["training.max_minutes=1"]))
    assert not is_finished(tmp_path, load_config("demo", ["training.max_minutes=2"]))  # a larger budget


# ------------------------------------------------------------------------------------------------ sweep


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize("tetrominoes", folder, 32, 8, seed=5)
    return folder


def sweep_command(out: Path, synth_dir: Path, *extra: str) -> list[str]:
    tiny = [t for t in TINY if not t.startswith("training.checkpoint_every")]
    sets = set_options(*tiny, "eval.num_images=4", "training.eval_every=2", "training.checkpoint_every=2")
    return [
        sys.executable, "-m", "emorl_cli", "sweep", "demo", "--seeds", "1,2", "--grid", "training.lr=7e-4,1e-3",
        "--out", str(out), "--data-dir", str(synth_dir), "--jobs", "2", *sets, *extra,
    ]  # fmt: skip


def headers(log: Path) -> list[str]:
    return re.findall(r"^=== .* emorl sweep (\w+): ", log.read_text(), flags=re.M)


def test_a_two_by_two_sweep_runs_reports_and_skips_finished_runs(synth_dir, tmp_path):
    out = tmp_path / "S"
    done = subprocess.run(
        sweep_command(out, synth_dir, "--set", "training.iters=4"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    names = ["lr=7e-4,seed=1", "lr=7e-4,seed=2", "lr=1e-3,seed=1", "lr=1e-3,seed=2"]
    for name in names:
        run = RunDir(out / name)
        assert [r["step"] for r in eval_rows(run.metrics)] == [2, 4]
        assert load_config(run.config).training.seed == int(name[-1])
        assert headers(run.root / "train.log") == ["starts"]
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["overrides"] == [
        "training.lr=7e-4",
        "training.seed=1",
    ]
    assert "finished" in done.stderr and f"emorl report {out}" in done.stdout

    # the same command again: nothing to do; more steps: every run resumes
    again = subprocess.run(
        sweep_command(out, synth_dir, "--set", "training.iters=4"), capture_output=True, text=True, env=subprocess_env()
    )
    assert again.returncode == 0 and again.stderr.count("skipped") == 4
    assert all(headers(out / name / "train.log") == ["starts"] for name in names)

    report = build_report([out])
    assert sorted(s.label for s in report.settings) == ["lr=0.0007", "lr=0.001"]
    assert all(len(s.runs) == 2 for s in report.settings) and not report.missing


def test_an_interrupted_sweep_resumes_with_the_same_command(synth_dir, tmp_path):
    out = tmp_path / "S"
    command = sweep_command(out, synth_dir, "--set", "training.iters=400", "--set", "training.checkpoint_every=1")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    first = out / "lr=7e-4,seed=1"
    deadline = time.monotonic() + 120
    while RunDir(first).latest_checkpoint() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "sweep interrupted" in stderr and "run the same command" in stderr
    assert not RunDir(first).finished.exists()  # stopped, not finished
    stopped_at = int(RunDir(first).latest_checkpoint().stem.split("_")[1])

    finish = [("training.iters=6" if arg == "training.iters=400" else arg) for arg in command]
    done = subprocess.run(finish, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert headers(first / "train.log") == ["starts", "resumes"]
    assert json.loads(RunDir(first).finished.read_text())["step"] == max(6, stopped_at)


def test_sweep_refuses_bad_values_before_starting_anything(cli, tmp_path):
    result = cli("sweep", "demo", "--out", tmp_path / "S", "--seeds", "1", "--grid", "model.K=2,4")
    assert result.exit_code == 1 and "run K=2,seed=1" in result.output and "model.K" in result.output
    assert not (tmp_path / "S").exists()
    for args, phrase in (
        (["--jobs", "0"], "--jobs"),
        (["--minutes", "nan"], "--minutes"),
        (["--seeds", "x"], "--seeds"),
    ):
        result = cli("sweep", "demo", "--out", tmp_path / "S", *args)
        assert result.exit_code == 1 and phrase in result.output, result.output


# ------------------------------------------------------------------------------------------------ report


def fake_run(folder: Path, seed: int, lr: float, fg_aris: list[float], mse: float = 0.01) -> Path:
    """A run folder as training leaves it: config.yaml and metrics.jsonl with evaluation rows every 100 steps."""
    cfg = load_config("demo", [f"training.seed={seed}", f"training.lr={lr}"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    lines = [json.dumps({"step": 0, "loss": 1.0, "seconds": 0.5})]
    for i, value in enumerate(fg_aris, start=1):
        row = {"step": 100 * i, "split": "test", "fg_ari": value, "ari": value / 2, "mse": mse * i, "kl": 10.0 * i}
        row["slot_spread"] = 0.25 * i
        lines.append(json.dumps({**row, "seconds": 30.0 * i}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_report_gives_mean_and_sample_std_over_seeds_per_setting(tmp_path):
    finals = {7e-4: [0.5, 0.7, 0.9], 1e-3: [0.2, 0.3]}
    for lr, values in finals.items():
        for seed, final in enumerate(values, start=1):
            fake_run(tmp_path / f"lr={lr},seed={seed}", seed, lr, [final + 0.05, final])  # best is the first row
    fake_run(tmp_path / "no-eval", 9, 7e-4, [])
    report = build_report([tmp_path])
    by_label = {s.label: s for s in report.settings}
    assert set(by_label) == {"lr=0.0007", "lr=0.001"}
    for lr, values in finals.items():
        setting = by_label[f"lr={lr}"]
        final, best = setting.figures("final"), setting.figures("best")
        assert final["fg_ari"]["mean"] == pytest.approx(statistics.mean(values))
        assert final["fg_ari"]["std"] == pytest.approx(statistics.stdev(values))
        assert best["fg_ari"]["mean"] == pytest.approx(statistics.mean(values) + 0.05)
        assert final["step"]["mean"] == 200 and final["kl"]["mean"] == pytest.approx(20.0)
    assert [str(p.name) for p, _ in report.missing] == ["no-eval"]
    at_first = by_label["lr=0.0007"].figures(Mark("step", 150))  # the row at step 100: final + 0.05
    assert at_first["fg_ari"]["mean"] == pytest.approx(statistics.mean(finals[7e-4]) + 0.05)
    at_minute = by_label["lr=0.0007"].figures(Mark("minute", 0.99))  # rows at 30 s and 60 s: only the first
    assert at_minute["step"]["mean"] == 100
    assert by_label["lr=0.001"].figures(Mark("step", 50))["fg_ari"]["n"] == 0  # before the first evaluation
    row = next(r for r in table_rows(report) if r[0] == "lr=0.0007")
    assert row[1] == "3" and row[4] == "70.0 ± 20.0" and row[5] == "75.0 ± 20.0" and row[6] == "35.0 ± 10.0"
    assert row[table_columns(report).index("slot spread")] == "0.50 ± 0.00"  # the final rows' 0.25 · 2
    csv_lines = to_csv(report).splitlines()
    assert csv_lines[0].startswith("setting,seeds,fg_ari_mean,fg_ari_std")
    assert len(csv_lines) == 3


def test_report_counts_a_run_only_at_marks_it_reached(tmp_path):
    long_run = fake_run(tmp_path / "seed=1", 1, 7e-4, [0.2, 0.4, 0.6])  # rows at steps 100-300, 30-90 s
    fake_run(tmp_path / "seed=2", 2, 7e-4, [0.3])  # stopped after step 100 (30 s), not finished
    setting = build_report([tmp_path]).settings[0]
    assert setting.figures(Mark("step", 100))["fg_ari"]["n"] == 2
    later = setting.figures(Mark("step", 300))["fg_ari"]
    assert later["n"] == 1 and later["mean"] == pytest.approx(0.6)  # seed 2's last figure is not carried on
    assert setting.figures(Mark("minute", 1.0))["fg_ari"]["n"] == 1
    assert cell(later, scale=100, of=2) == "60.0 ± 0.0 (1 of 2)"
    # a run that spent its time budget of 80 s counts up to 2 minutes (the budget rounded up), not beyond
    (long_run / "finished.json").write_text(json.dumps({"step": 300, "reason": "time budget", "seconds": 80.0}))
    budgeted = build_report([long_run]).settings[0]
    assert budgeted.figures(Mark("minute", 2.0))["fg_ari"]["mean"] == pytest.approx(0.6)
    assert budgeted.figures(Mark("minute", 2.5))["fg_ari"]["n"] == 0


def test_runs_that_differ_only_in_their_data_folder_are_one_setting(tmp_path):
    for seed in (1, 2):  # two `emorl demo --out D<seed>` runs: the same data synthesised into two folders
        folder = fake_run(tmp_path / f"D{seed}" / "run", seed, 7e-4, [0.2 * seed])
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["data"]["data_dir"] = str(tmp_path / f"D{seed}" / "data")
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    report = build_report([tmp_path / "D1" / "run", tmp_path / "D2" / "run"])
    assert len(report.settings) == 1 and report.settings[0].figures("final")["fg_ari"]["n"] == 2


def test_mean_std_of_one_value_and_of_none():
    assert mean_std([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_report_cli_prints_the_table_lists_missing_runs_and_writes_csv_json_and_plot(cli, tmp_path):
    for seed, values in ((1, [0.1, 0.4, 0.6]), (2, [0.2, 0.3, 0.8])):
        fake_run(tmp_path / "runs" / f"seed={seed}", seed, 7e-4, values)
    fake_run(tmp_path / "runs" / "empty", 3, 1e-3, [])
    plot, csv = tmp_path / "curves.png", tmp_path / "table.csv"
    result = cli("report", tmp_path / "runs", "--plot", plot, "--csv", csv, "--at-step", "200", "--at-minute", "0.5")
    assert result.exit_code == 0, result.output
    assert "@ step 200" in result.output and "@ 0.5 min" in result.output and "35.0 ± 7.1" in result.output
    assert "70.0 ± 14.1" in result.output and "missing:" in result.output and "empty" in result.output
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 800
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels.std(axis=2) > 30).sum() > 500  # coloured curves were drawn, not just axes
    assert csv.read_text().startswith("setting,seeds")
    as_json = cli("report", tmp_path / "runs" / "seed=1", tmp_path / "runs" / "seed=2", "--json")
    parsed = json.loads(as_json.stdout)
    assert parsed["settings"][0]["final"]["fg_ari"]["mean"] == pytest.approx(0.7)
    assert parsed["settings"][0]["seeds"] == [1, 2]


def test_report_refuses_folders_without_runs(cli, tmp_path):
    result = cli("report", tmp_path)
    assert result.exit_code == 1 and "holds no runs" in result.output
    fake_run(tmp_path / "only", 1, 7e-4, [])
    result = cli("report", tmp_path / "only")
    assert result.exit_code == 1 and "nothing to report" in result.output


def test_several_sweeps_of_one_setting_each_are_named_by_their_folders(tmp_path):
    for folder, lr in (("base", 7e-4), ("fast", 1e-3)):
        for seed in (1, 2):
            fake_run(tmp_path / folder / f"seed={seed}", seed, lr, [0.5])
    report = build_report([tmp_path / "base", tmp_path / "fast"])
    assert [s.label for s in report.settings] == ["base", "fast"]
    assert report.settings[1].values == {"training.lr": 0.001}
    assert [s.label for s in build_report([tmp_path / "base"]).settings] == ["all runs"]


def test_runs_from_before_a_config_field_existed_compare_with_its_default(tmp_path):
    old = fake_run(tmp_path / "old", 1, 7e-4, [0.5])
    raw = yaml.safe_load((old / "config.yaml").read_text())
    del raw["model"]["encoder_width"]  # written by a version without the field
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    fake_run(tmp_path / "new", 2, 7e-4, [0.7])
    report = build_report([tmp_path])
    assert [s.label for s in report.settings] == ["all runs"] and len(report.settings[0].runs) == 2
