#!/usr/bin/env python3
"""Check the release artifacts as a user without a C compiler gets them.

    python tools/dist_check.py [DIST_DIR] [--work DIR] [--pytest-args ARGS]

(``make dist-check`` builds DIST_DIR = dist/ first when needed.)  With every
C and C++ compiler hidden -- a PATH made of links to the programs on the
current PATH less the compilers, and CC=/bin/false CXX=/bin/false -- it

1. installs the wheel from DIST_DIR, with the test extras, into a fresh
   virtual environment;
2. runs ``fm --version`` (it must print the wheel's version) and checks that
   ``import fmcli`` finds the installed package, compiled extensions included;
3. runs ``make demo``'s steps: train, predict and inspect on data/samples;
4. installs the sdist into a second fresh environment, which must fail, and
   fail for want of a compiler (so the wheel is what spared the user one);
5. runs the test suite (``-m "not slow"``) against the installed package:
   tests/ and the files they read are copied to a scratch directory without
   the fmcli/ sources, so that ``import fmcli`` can only find the wheel.

Each step prints one "dist-check: ..." line; the exit status is 0 only when
all pass.  pip needs access to the package index (dependencies, and the
build requirements of the sdist).  --work DIR keeps the environments and
logs there (default: a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Program names of C/C++ compilers and their drivers, bare or with a target
# prefix and version suffix: cc, gcc-12, x86_64-linux-gnu-g++, clang++-15, ...
COMPILER = re.compile(r"^(?:.*-)?(?:cc|c\+\+|c89|c99|cpp|gcc|g\+\+|clang|clang\+\+|tcc|icc|icx|icpx|nvcc)"
                      r"(?:-[0-9.]+)?$")
# What must never be found on the hidden-compiler PATH.
PROBES = ("cc", "c++", "gcc", "g++", "cpp", "clang", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++")
# How a failed compile looks in pip's output: setuptools reports the command
# it ran, "error: command 'gcc' failed: ..." or "error: Command '['/bin/false',
# ...]' returned non-zero exit status 1"; group 1 is the program.
FAILED_COMMAND = re.compile(r"error: command '\[?'?([^',\]]+)'?[^\n]*?(?:failed|returned non-zero exit status)",
                            re.IGNORECASE)
# Files of the checkout that the tests read (data, scripts they run, docs
# they compare); the fmcli/ sources are deliberately left out.
TEST_TREE = ("tests", "data", "benchmarks", "fuzz", "tools", "man", "README.md", "CHANGELOG.md",
             "MANIFEST.in", "pyproject.toml", "Makefile")


def say(message: str) -> None:
    print(f"dist-check: {message}", flush=True)


class Failed(Exception):
    """A step failed; the message says which and why."""


def run(argv: list[str], env: dict, log: Path, cwd: Path | None = None,
        expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run argv, its output (stdout and stderr together) saved to log."""
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    log.write_text(f"$ {shlex.join(argv)}\n{proc.stdout}", encoding="utf-8")
    if expect_ok and proc.returncode != 0:
        tail = "\n".join(proc.stdout.rstrip().splitlines()[-25:])
        raise Failed(f"{shlex.join(argv[:4])} ... exited with {proc.returncode} (log {log}):\n{tail}")
    return proc


def find_artifacts(dist: Path) -> tuple[Path, Path]:
    """The one wheel and the one sdist in dist."""
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise Failed(f"{dist} should hold one wheel and one sdist, it holds "
                     f"{[p.name for p in wheels + sdists]} (run 'make dist')")
    return wheels[0], sdists[0]


def wheel_version(wheel: Path) -> str:
    """The version field of a wheel's file name (name-version-python-abi-platform.whl)."""
    return wheel.name.split("-")[1]


def compilerless_path(bin_dir: Path) -> str:
    """A directory of links to every program on PATH except the compilers.

    The first program of a name wins, as it would in a PATH search.  Returns
    the directory (for PATH); raises Failed if a compiler is still found.
    """
    bin_dir.mkdir(parents=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = bin_dir / entry.name
            if COMPILER.match(entry.name) or target.exists() or target.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    found = [name for name in PROBES if shutil.which(name, path=str(bin_dir))]
    if found:
        raise Failed(f"compilers still on the hidden-compiler PATH: {found}")
    return str(bin_dir)


def fresh_venv(where: Path, env: dict, log: Path) -> Path:
    """A new virtual environment (no system site packages) with a current pip; its python."""
    run([sys.executable, "-m", "venv", str(where)], env, log)
    python = where / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], env, log.with_suffix(".pip.log"))
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dist", nargs="?", default=str(ROOT / "dist"),
                        help="directory holding the wheel and the sdist (default: dist/)")
    parser.add_argument("--work", help="keep the environments and logs in this new directory")
    parser.add_argument("--pytest-args", default="",
                        help="more arguments for pytest, e.g. a subset of test files (default: none)")
    args = parser.parse_args(argv)

    if args.work:
        work = Path(args.work).resolve()
        if work.exists():
            say(f"FAILED: {work} exists; --work wants a new directory")
            return 2
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="fm-dist-check-"))
    try:
        wheel, sdist = find_artifacts(Path(args.dist).resolve())
        check(wheel, sdist, work, shlex.split(args.pytest_args))
    except Failed as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    say("all steps passed")
    return 0


def check(wheel: Path, sdist: Path, work: Path, pytest_args: list[str]) -> None:
    say(f"wheel {wheel.name}, sdist {sdist.name}")
    logs = work / "logs"
    logs.mkdir()

    # No compiler anywhere: not on PATH, and CC/CXX name a program that fails.
    hidden = compilerless_path(work / "bin-without-compilers")
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LDSHARED", "CFLAGS", "LDFLAGS")}
    base.update(PATH=hidden, CC="/bin/false", CXX="/bin/false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    say(f"compilers hidden: none of {', '.join(PROBES)} on PATH; CC=/bin/false CXX=/bin/false")

    # 1. The wheel, with what the tests need, into a fresh environment.
    venv = work / "venv-wheel"
    python = fresh_venv(venv, base, logs / "venv-wheel.log")
    env = dict(base, PATH=f"{venv / 'bin'}{os.pathsep}{hidden}", VIRTUAL_ENV=str(venv))
    run([str(python), "-m", "pip", "install", f"{wheel}[test]"], env, logs / "pip-wheel.log")
    say("pip install of the wheel: ok")

    # 2. The command and the package come from the wheel.
    scratch = work / "scratch"
    scratch.mkdir()
    fm = str(venv / "bin" / "fm")
    out = run([fm, "--version"], env, logs / "fm-version.log").stdout.strip()
    if out != f"fm, version {wheel_version(wheel)}":
        raise Failed(f"fm --version printed {out!r}, the wheel is version {wheel_version(wheel)}")
    where = run([str(python), "-c", "import fmcli, fmcli._core._kernels as k, fmcli._core._parse as p; "
                 "print(fmcli.__file__); print(k.__file__); print(p.__file__)"],
                env, logs / "import.log", cwd=scratch).stdout.split()
    site = str(venv)
    if len(where) != 3 or not all(path.startswith(site) for path in where):
        raise Failed(f"import fmcli did not find the installed wheel: {where}")
    say(f"{out}; import fmcli and its extensions from the installed wheel: ok")

    # 3. make demo's steps, on the bundled samples (the cache kept out of the user's).
    samples = ROOT / "data" / "samples"
    model = scratch / "demo.fm"
    demo_env = dict(env, FMCLI_CACHE_DIR=str(work / "fm-cache"))
    run([fm, "train", "-p", str(samples / "valid.ffm"), "--auto-stop", "-o", str(model),
         str(samples / "train.ffm")], demo_env, logs / "demo-train.log", cwd=scratch)
    run([fm, "predict", str(model), str(samples / "valid.ffm"), "-o", str(scratch / "predictions.txt")],
        demo_env, logs / "demo-predict.log", cwd=scratch)
    run([fm, "inspect", str(model)], demo_env, logs / "demo-inspect.log", cwd=scratch)
    rows = sum(1 for _ in open(samples / "valid.ffm", "rb"))
    predictions = (scratch / "predictions.txt").read_text().split()
    if len(predictions) != rows or not all(0.0 < float(p) < 1.0 for p in predictions):
        raise Failed(f"fm predict wrote {len(predictions)} lines for {rows} rows, or values outside (0, 1)")
    say(f"demo: train, predict ({rows} probabilities), inspect: ok")

    # 4. The sdist cannot be installed here: it has to compile.
    venv_src = work / "venv-sdist"
    python_src = fresh_venv(venv_src, base, logs / "venv-sdist.log")
    env_src = dict(base, PATH=f"{venv_src / 'bin'}{os.pathsep}{hidden}", VIRTUAL_ENV=str(venv_src))
    proc = run([str(python_src), "-m", "pip", "install", "--no-cache-dir", "--no-deps", str(sdist)],
               env_src, logs / "pip-sdist.log", expect_ok=False)
    if proc.returncode == 0:
        raise Failed("pip install of the sdist succeeded: a compiler was not hidden")
    compilers = [m.group(1) for m in FAILED_COMMAND.finditer(proc.stdout)
                 if m.group(1) == "/bin/false" or COMPILER.match(os.path.basename(m.group(1)))]
    if not compilers:
        tail = "\n".join(proc.stdout.rstrip().splitlines()[-25:])
        raise Failed(f"pip install of the sdist failed, but not for want of a compiler:\n{tail}")
    compiling = re.search(r"building '([^']+)' extension", proc.stdout)
    say(f"pip install of the sdist fails for want of a compiler, as it should (building "
        f"{compiling.group(1) if compiling else 'an extension'}, the compiler {compilers[0]} failed)")

    # 5. The test suite against the installed package, from a copy of the tests.
    tree = work / "tree"
    tree.mkdir()
    for name in TEST_TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif source.exists():
            shutil.copy2(source, tree / name)
    command = [str(python), "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
               "--rootdir", str(tree), *pytest_args]
    started = time.monotonic()
    proc = run(command, env, logs / "pytest.log", cwd=tree, expect_ok=False)
    summary = (proc.stdout.rstrip().splitlines() or ["(no output)"])[-1].strip("= ")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.rstrip().splitlines()[-40:])
        raise Failed(f"the test suite failed against the wheel ({summary}):\n{tail}")
    say(f"pytest -m 'not slow' against the installed wheel: {summary} "
        f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
