"""Documentation stays in step with the code."""

import os

import pytest
from click.testing import CliRunner

from fmcli.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["inspect"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, command + ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_man_pages_match_the_click_tree(tmp_path):
    click_man = pytest.importorskip("click_man.core")
    from fmcli import __version__

    click_man.write_man_pages("fm", cli, version=__version__, target_dir=str(tmp_path), date="2026-11-21")
    for name in sorted(os.listdir(tmp_path)):
        with open(tmp_path / name) as fresh, open(os.path.join(ROOT, "man", name)) as committed:
            assert fresh.read() == committed.read(), f"man/{name} is stale: run 'make man'"


def test_model_format_page_exists():
    with open(os.path.join(ROOT, "man", "fm-model.5")) as f:
        text = f.read()
    assert ".TH FM-MODEL 5" in text
