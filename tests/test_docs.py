"""Documentation stays in step with the code."""

import os
import shutil
import subprocess

import click
import pytest
from click.testing import CliRunner

from fmcli import __version__
from fmcli.cli import _manpages, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(ROOT, "man")
MAN_DATE = "2026-11-21"   # the Makefile's MAN_DATE
PAGES = ["fm.1"] + [f"fm-{name}.1" for name in cli.commands] + ["ffm-train.1", "ffm-predict.1"]


def read_page(name):
    with open(os.path.join(MAN, name), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["inspect"], ["serve"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, command + ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_man_pages_match_the_click_tree():
    fresh = _manpages.pages(cli, MAN_DATE, __version__)
    assert sorted(fresh) == sorted(PAGES)
    for name, text in fresh.items():
        assert text == read_page(name), f"man/{name} is stale: run 'make man'"


@pytest.mark.parametrize("name", [None] + list(cli.commands))
def test_every_option_is_on_its_page(name):
    command = cli if name is None else cli.commands[name]
    page = read_page("fm.1" if name is None else f"fm-{name}.1")
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        for opt in param.opts + param.secondary_opts:
            assert _manpages.option_markup(opt) in page, f"{opt} is missing from the page of fm {name or ''}"


@pytest.mark.parametrize("name", PAGES)
def test_pages_have_the_operational_sections(name):
    page = read_page(name)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT",
                    "EXAMPLES", "SEE ALSO"):
        assert f".SH {section}\n" in page, f"{name} has no {section} section"
    assert "\\fB0\\fR" in page and "\\fB2\\fR" in page


def test_pages_document_exit_codes_and_environment():
    page = read_page("fm.1")
    for code in (0, 1, 2, 65, 66, 70, 71, 73, 74, 75, 78, 130, 141, 143):
        assert f".TP\n\\fB{code}\\fR\n" in page, f"exit status {code} is not documented in fm.1"
    train = read_page("fm-train.1")
    for name in ("FMCLI_CACHE_DIR", "XDG_CACHE_HOME", "SOURCE_DATE_EPOCH", "FM_TRAIN_"):
        assert name in train
    assert "_FM_COMPLETE=bash_source fm" in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("name", PAGES + ["fm-model.5"])
def test_man_renders_pages_without_warnings(name):
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C"}
    result = subprocess.run(["man", "--warnings", "-l", os.path.join(MAN, name)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"man {name}: {result.stderr}"
    assert "OPTIONS" in result.stdout or name.endswith(".5")


def test_model_format_page_exists():
    text = read_page("fm-model.5")
    assert ".TH FM-MODEL 5" in text


def test_generator_writes_every_page(tmp_path):
    written = _manpages.write_pages(str(tmp_path), MAN_DATE)
    assert sorted(os.path.basename(p) for p in written) == sorted(PAGES)
