"""Attaches every command module to the root `app` (imported once by `emorl_cli.cli.app`)."""

from emorl_cli.cli import (
    bench_cmd,
    config_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    experiments_cmd,
    models_cmd,
    pictures_cmd,
    train_cmd,
)
from emorl_cli.cli.app import app

app.add_typer(data_cmd.app, name="data", help="Download, synthesise, inspect and verify datasets.")
app.command("train", cls=train_cmd.OptionalValueCommand)(train_cmd.train)
app.add_typer(eval_cmd.app, name="eval", help="Evaluate a checkpoint: ARI, DCI, activeness.")
app.command("gifs")(pictures_cmd.gifs)
app.command("viz")(pictures_cmd.viz)
app.command("tune-geco")(demo_cmd.tune_geco)
app.command("demo")(demo_cmd.demo)
app.command("sweep")(experiments_cmd.sweep)
app.command("report")(experiments_cmd.report)
app.command("bench")(bench_cmd.bench)
app.add_typer(config_cmd.app, name="config", help="Show, validate and convert configs.")
app.add_typer(models_cmd.app, name="models", help="List and download the published EfficientMORL checkpoints.")
