"""`fm inspect`: what a model file holds."""

from __future__ import annotations

import click

from . import _render


@click.command()
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON on stdout.")
def inspect(model_file, as_json):
    """Print MODEL_FILE's header: model, sizes, hyperparameters, training summary."""
    from ..inspect import summarize

    _render.model_summary(summarize(model_file), as_json)
