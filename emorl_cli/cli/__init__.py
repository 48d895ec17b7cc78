"""Typer commands: parse, load the config, call one library function, render. The only layer that prints or exits."""
