"""benchmarks/bench.py end to end on a tiny generated data set.

libffm is replaced by two small scripts that print what the real
ffm-train and ffm-predict print and write the files they write, so the
whole harness (fmcli tools, --variant, libffm parsing, cache read, ratios,
JSON) runs without a libffm build.  Nothing here depends on how fast
anything ran: only on which figures are present and that they are numbers.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"

FAKE_FFM_TRAIN = '''
import os
import sys

args = sys.argv[1:]
opts, positional = {}, []
while args:
    a = args.pop(0)
    if a in ("--auto-stop", "--no-norm", "--on-disk", "--quiet"):
        opts[a] = True
    elif a.startswith("-") and args:
        opts[a] = args.pop(0)
    else:
        positional.append(a)
train, model = positional
epochs = int(opts.get("-t", "15"))
for path in [train] + ([opts["-p"]] if "-p" in opts else []):
    print("First check if the text file has already been converted to binary format (0.0 seconds)")
    print()
    cache = os.path.basename(path) + ".bin"
    if os.path.exists(cache):
        print("Binary file found.")
    else:
        print("Binary file NOT found. Convert text file to binary file (0.5 seconds)")
        open(cache, "w").close()
    print()
print("iter   tr_logloss   va_logloss      tr_time")
for i in range(1, epochs + 1):
    print(f"{i:4d}{0.5 - 0.01 * i:13.5f}{0.48 - 0.01 * i:13.5f}{0.1 * i:13.1f}")
with open(model, "w") as f:
    f.write("fake libffm model\\n")
'''

FAKE_FFM_PREDICT = '''
import sys

test, model, out = sys.argv[1:4]
with open(model) as f:
    f.read()
with open(test) as f:
    rows = sum(1 for line in f if line.strip())
with open(out, "w") as f:
    f.write("0.5\\n" * rows)
print("logloss = 0.45")
'''


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_libffm(tmp_path):
    d = tmp_path / "libffm"
    d.mkdir()
    _script(d / "ffm-train", FAKE_FFM_TRAIN)
    _script(d / "ffm-predict", FAKE_FFM_PREDICT)
    return d


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.skipif(shutil.which("fm", path=str(Path(sys.executable).parent)) is None,
                    reason="needs the fm command next to this Python (an installed fmcli)")
def test_bench_end_to_end(tmp_path, fake_libffm):
    work = tmp_path / "work"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "3000", "--epochs", "1", "--repeat", "1",
         "--threads", "1", "--k", "4", "--models", "lr,fm,ffm,fwfm",
         "--variant", "b2=--batch-size 2", "--libffm-dir", str(fake_libffm),
         "--json", str(out), "--work-dir", str(work), "--markdown"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FMCLI_CACHE_DIR": str(tmp_path / "fmcache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    expected = {
        ("lr", "fmcli+linear"),
        ("fm", "fmcli"), ("fm", "fmcli:b2"),
        ("ffm", "fmcli"), ("ffm", "libffm"), ("ffm", "fmcli:b2"),
        ("fwfm", "fmcli"), ("fwfm", "fmcli:b2"),
    }
    for section in ("train", "predict", "summary"):
        assert {(r["model"], r["tool"]) for r in doc[section]} == expected, section
    assert doc["meta"]["variants"] == {"b2": ["--batch-size", "2"]}
    variant_train = [r for r in doc["train"] if r["tool"] == "fmcli:b2"]
    assert all(r["argv"][-4:-1] == ["--batch-size", "2", "--no-cache"] for r in variant_train)
    assert all("--no-bias" in r["argv"] and "--no-linear" in r["argv"] for r in variant_train)
    fwfm = [r for r in doc["train"] if r["model"] == "fwfm"]
    assert all(r["argv"][r["argv"].index("--model") + 1] == "fwfm" for r in fwfm)

    for s in doc["summary"]:
        for key in ("train_rows_s", "epoch_s", "all_in_epoch_s", "best_va_logloss",
                    "predict_rows_s", "peak_rss_mb", "predict_rss_mb", "parse_mb_s"):
            assert _number(s[key]), (s["model"], s["tool"], key, s[key])
        if s["tool"] == "libffm":
            assert s["cache_read_rows_s"] is None
            assert s["converted"] == [True]
        else:
            assert _number(s["cache_read_rows_s"]) and s["cache_read_rows_s"] > 0

    [cache_read] = doc["cache_read"]
    assert cache_read["rows"] == doc["data"]["train_rows"] == 3000
    assert cache_read["nnz"] > 0 and cache_read["cache_bytes"] > 0 and cache_read["chunks"] >= 1
    assert cache_read["rows_per_s"] > 0 and cache_read["open_read_rows_per_s"] > 0
    assert not list(work.glob("scratch/fmcache-*")), "the temporary cache directory is removed"
    assert not list(work.glob("scratch/*.bin")), "libffm's .bin caches are removed"

    # fmcli and the variant against libffm (ffm only: libffm runs only there)
    assert {(r["model"], r["tool"]) for r in doc["ratios"]} == {("ffm", "fmcli"), ("ffm", "fmcli:b2")}
    for r in doc["ratios"]:
        for key in ("parse", "train_rows_s", "all_in_epoch", "predict_rows_s", "train_wall",
                    "peak_rss", "predict_peak_rss", "va_logloss_diff_pct"):
            assert _number(r[key]), (r["tool"], key, r[key])
    # the variant against the exact fmcli tool, on every model but lr
    assert {r["model"] for r in doc["variant_ratios"]} == {"fm", "ffm", "fwfm"}
    for r in doc["variant_ratios"]:
        assert (r["tool"], r["baseline"]) == ("fmcli:b2", "fmcli")
        for key in ("train_rows_s", "all_in_epoch", "predict_rows_s", "peak_rss",
                    "predict_peak_rss", "va_logloss_diff_pct"):
            assert _number(r[key]), (r["model"], key, r[key])
    assert doc["scaling"] == []  # one thread count only

    report = proc.stdout
    assert "| parse MB/s | cache read rows/s | train rows/s |" in report
    assert "fmcli:b2 vs libffm, ffm k=4, 1 thread" in report
    assert "fmcli:b2 vs fmcli, fwfm k=4, 1 thread" in report
    assert "fmcli:b2 = fmcli plus --batch-size 2." in report

    # the time-to-quality run (on by default with libffm): libffm's best epoch is the target
    ttq = json.loads((tmp_path / "bench-time-to-quality.json").read_text())
    [rep] = ttq["repeats"]
    assert rep["target_va_logloss"] == pytest.approx(0.33)   # the fake's 15th and best epoch
    assert rep["libffm_s"] > 0 and len(rep["runs"]["libffm"]["evals"]) == 15
    fm_run = rep["runs"]["fmcli"]
    assert "--auto-stop" in fm_run["command"] and fm_run["evals"], fm_run
    assert rep["fmcli_best_va_logloss"] == min(ll for _, ll in fm_run["evals"])
    assert "time to quality, ffm k=4" in report


def _load_bench():
    spec = importlib.util.spec_from_file_location("fmcli_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_scaling_and_variant_ratios():
    bench = _load_bench()

    def summary(threads, tool, rows_s, all_in, logloss, rss):
        return bench.Summary(
            model="ffm", k=4, threads=threads, tool=tool, runs=1, parse_mb_s=100.0,
            cache_read_rows_s=1e6, train_rows_s=rows_s, epoch_s=1.0, all_in_epoch_s=all_in,
            best_va_logloss=logloss, predict_rows_s=rows_s / 2, predict_logloss=logloss,
            wall_s=all_in, peak_rss_mb=rss, predict_wall_s=1.0, predict_rss_mb=rss / 2,
        )

    summaries = [
        summary(1, "fmcli", 100.0, 4.0, 0.40, 200.0),
        summary(1, "fmcli:f16", 150.0, 2.0, 0.41, 100.0),
        summary(2, "fmcli", 180.0, 2.5, 0.40, 200.0),
        summary(2, "fmcli:f16", 300.0, 1.0, 0.42, 120.0),
        summary(4, "fmcli", 200.0, 2.0, 0.40, 200.0),
    ]
    scaling = bench.compute_scaling(summaries)
    got = {(c.tool, c.threads): c for c in scaling}
    assert set(got) == {("fmcli", 2), ("fmcli:f16", 2), ("fmcli", 4)}
    assert got["fmcli", 2].train_rows_s == pytest.approx(1.8)
    assert got["fmcli", 2].all_in_epoch == pytest.approx(1.6)
    assert got["fmcli:f16", 2].train_rows_s == pytest.approx(2.0)
    assert got["fmcli", 4].predict_rows_s == pytest.approx(2.0)

    ratios = {r.threads: r for r in bench.compute_variant_ratios(summaries)}
    assert set(ratios) == {1, 2}
    assert ratios[1].train_rows_s == pytest.approx(1.5)
    assert ratios[1].all_in_epoch == pytest.approx(2.0)
    assert ratios[1].peak_rss == pytest.approx(0.5)
    assert ratios[1].va_logloss_diff_pct == pytest.approx(2.5)
    assert ratios[2].va_logloss_diff_pct == pytest.approx(5.0)
    assert bench.compute_ratios(summaries) == []   # no libffm rows

    lines = bench.scaling_lines(scaling) + bench.variant_ratio_lines(list(ratios.values()))
    assert "fmcli, ffm k=4: 2 threads / 1 thread: train rows/s 1.80x" in lines[0]
    assert any("fmcli:f16 vs fmcli, ffm k=4, 1 thread" in line and "+2.50%" in line for line in lines)


@pytest.mark.parametrize("text, name, args", [
    ("f16=--storage float16", "f16", ["--storage", "float16"]),
    ("b8=--batch-size 8 --optimizer 'adam'", "b8", ["--batch-size", "8", "--optimizer", "adam"]),
    ("same=", "same", []),
])
def test_variant_option(text, name, args):
    bench = _load_bench()
    parsed = bench.parse_args(["--variant", text])
    assert [(v.name, v.args, v.tool) for v in parsed.variant] == [(name, args, "fmcli:" + name)]
    assert parsed.variant[0].runs_on("fm") and not parsed.variant[0].runs_on("lr")


def test_variant_limited_to_models():
    bench = _load_bench()
    v = bench.parse_args(["--variant", "f16@ffm,fwfm=--storage float16"]).variant[0]
    assert (v.name, v.args, v.models) == ("f16", ["--storage", "float16"], ("ffm", "fwfm"))
    assert v.runs_on("ffm") and v.runs_on("fwfm") and not v.runs_on("fm") and not v.runs_on("lr")


@pytest.mark.parametrize("argv", [
    ["--variant", "no-equals-sign"],
    ["--variant", "bad name=--batch-size 2"],
    ["--variant", "a@gbdt=--x"],
    ["--variant", "a@lr=--x"],
    ["--variant", "a=--x", "--variant", "a=--y"],
    ["--variant", "a=--x", "--no-libffm-exact"],
    ["--models", "ffm,gbdt"],
])
def test_bad_options(argv):
    bench = _load_bench()
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


SCALING = ROOT / "benchmarks" / "scaling.py"


def test_scaling_benchmark_runs_every_setting_on_the_same_slices(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "3000", "--work-dir", str(tmp_path),
                           "--slice-rows", "500", "--epochs", "2", "--hogwild", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["settings"]]
    assert names == ["1 thread", "2 threads", "2 threads, --hot-features 0"]
    for s in report["settings"]:
        assert len(s["rows_per_s"]) == 12   # 6 slices x 2 epochs, each timed
        assert all(x > 0 for x in s["rows_per_s"])
        assert math.isfinite(s["va_logloss"]) and 0 < s["va_logloss"] < 1
        assert s["ratio_q25"] <= s["ratio_median"] <= s["ratio_q75"]
    assert report["settings"][0]["ratio_median"] == 1.0
    assert "x 1 thread" in proc.stdout and "2 threads, --hot-features 0" in proc.stdout


def test_scaling_benchmark_needs_one_thread_and_more(tmp_path):
    proc = subprocess.run([sys.executable, str(SCALING), "--threads", "2", "--rows", "100",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--threads must list 1" in proc.stderr


def test_scaling_benchmark_compares_optimizers_and_the_general_loops(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "2000", "--work-dir", str(tmp_path),
                           "--slice-rows", "500", "--threads", "1", "--optimizers", "adagrad,rowwise-adagrad",
                           "--general-loops", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = {s["name"]: s for s in json.loads(out.read_text())["settings"]}
    assert list(report) == ["adagrad, 1 thread", "adagrad, 1 thread, general loops",
                            "rowwise-adagrad, 1 thread", "rowwise-adagrad, 1 thread, general loops"]
    assert [s["optimizer"] for s in report.values()] == ["adagrad"] * 2 + ["rowwise-adagrad"] * 2
    for name in ("adagrad, 1 thread", "rowwise-adagrad, 1 thread"):
        # the one-hot shortcut computes the same model as the general loops
        assert report[name]["va_logloss"] == report[name + ", general loops"]["va_logloss"]
        assert len(report[name]["rows_per_s"]) == 4
    assert report["adagrad, 1 thread"]["va_logloss"] != report["rowwise-adagrad, 1 thread"]["va_logloss"]
    proc = subprocess.run([sys.executable, str(SCALING), "--threads", "1", "--rows", "100",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing to compare" in proc.stderr


def test_scaling_benchmark_runs_hot_variants(tmp_path):
    out = tmp_path / "var.json"
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "3000", "--work-dir", str(tmp_path),
                           "--slice-rows", "1000", "--epochs", "2", "--hot-variant", "bytes=4096,step=1",
                           "--hot-variant", "share=0.5,min_share=0.001", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr
    report = {s["name"]: s for s in json.loads(out.read_text())["settings"]}
    assert list(report) == ["1 thread", "2 threads", "2 threads, bytes=4096,step=1",
                            "2 threads, share=0.5,min_share=0.001"]
    assert report["2 threads, bytes=4096,step=1"]["variant"] == {"HOT_BYTES": 4096, "HOT_SYNC_STEP": 1}
    assert report["2 threads, share=0.5,min_share=0.001"]["variant"] == {"HOT_SYNC_SHARE": 0.5,
                                                                        "HOT_MIN_SHARE": 0.001}
    for s in report.values():
        assert len(s["va_by_epoch"]) == 2 and s["va_logloss"] == s["va_by_epoch"][-1]
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "100", "--work-dir", str(tmp_path),
                           "--hot-variant", "colour=3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--hot-variant" in proc.stderr


def test_scaling_benchmark_runs_separate_models(tmp_path):
    # N one-thread models, each on 1/N of every slice at once: timed like the
    # others, validated never (each model sees a share of the rows)
    out = tmp_path / "sep.json"
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "3000", "--work-dir", str(tmp_path),
                           "--slice-rows", "1000", "--threads", "1,2", "--separate-models",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = {s["name"]: s for s in json.loads(out.read_text())["settings"]}
    assert list(report) == ["1 thread", "2 threads", "2 threads, separate models"]
    sep = report["2 threads, separate models"]
    assert sep["separate"] and sep["threads"] == 2 and sep["hot"] == 0
    assert len(sep["rows_per_s"]) == 3 and all(x > 0 for x in sep["rows_per_s"])
    assert sep["va_logloss"] is None and sep["va_by_epoch"] == []
    assert math.isfinite(report["2 threads"]["va_logloss"])


def test_scaling_benchmark_reports_cpu_share_and_hot_sync_settings(tmp_path):
    out = tmp_path / "sync.json"
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "2000", "--work-dir", str(tmp_path),
                           "--slice-rows", "500", "--hot-sync", "64,4096", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = {s["name"]: s for s in json.loads(out.read_text())["settings"]}
    assert list(report) == ["1 thread", "2 threads", "2 threads, hot sync 64", "2 threads, hot sync 4096"]
    assert [s["hot_sync"] for s in report.values()] == [None, None, 64, 4096]
    for s in report.values():
        # CPU seconds of the whole process: on slices this short, threads still
        # spinning after the previous setting's pass can add more than the slice's own
        assert len(s["cpu_share"]) == 4 and all(x > 0 and math.isfinite(x) for x in s["cpu_share"])
        assert math.isfinite(s["ratio_per_cpu_second"]) and s["ratio_per_cpu_second"] > 0
    assert report["1 thread"]["ratio_per_cpu_second"] == 1.0
    assert "cpu share" in proc.stdout and "x per cpu-s" in proc.stdout
    proc = subprocess.run([sys.executable, str(SCALING), "--rows", "100", "--work-dir", str(tmp_path),
                           "--hot-sync", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--hot-sync" in proc.stderr


def test_cache_checks_benchmark_runs_and_reports(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "cache_checks.py"
    train = Path(__file__).resolve().parent.parent / "data" / "samples" / "train.ffm"
    out = tmp_path / "cc.json"
    run = subprocess.run([sys.executable, str(script), "--train", str(train), "--repeat", "2",
                          "--epoch-seconds", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert figures["rows"] == 5000 and figures["checked_s"] > 0 and figures["unverified_s"] > 0
    assert "of one epoch" in run.stdout


def _load_ttq():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import time_to_quality
    finally:
        sys.path.remove(str(BENCH.parent))
    return time_to_quality


def test_time_to_quality_stamps_lines_as_they_arrive(tmp_path):
    ttq = _load_ttq()
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\n"
                      "for ep, ll in ((1, 0.5), (2, 0.4), (3, 0.45)):\n"
                      "    time.sleep(0.3)\n"
                      "    print(f'{ep:4d}{0.6:13.5f}{ll:13.5f}{0.1:13.1f}', flush=True)\n")
    run = ttq.run_stamped("x", [sys.executable, str(script)], cwd=tmp_path, env=None,
                          parse=ttq.libffm_logloss)
    assert [ll for _, ll in run.evals] == [0.5, 0.4, 0.45]
    times = [t for t, _ in run.evals]
    assert times == sorted(times) and times[2] - times[0] >= 0.5   # stamped on arrival, not at exit
    assert run.best() == (times[1], 0.4)
    assert run.first_at_most(0.42) == times[1] and run.first_at_most(0.3) is None
    assert ttq.fmcli_logloss("    2     0.37188      0.37248      0.87741      4.51      221540") == 0.37248
    assert ttq.fmcli_logloss("    2     0.37188            -            -      4.51      221540") is None
    bad = tmp_path / "bad.py"
    bad.write_text("import sys; print('boom'); sys.exit(3)\n")
    with pytest.raises(SystemExit, match="exited 3"):
        ttq.run_stamped("x", [sys.executable, str(bad)], cwd=tmp_path, env=None, parse=ttq.libffm_logloss)


@pytest.mark.skipif(shutil.which("fm", path=str(Path(sys.executable).parent)) is None,
                    reason="needs the fm command next to this Python (an installed fmcli)")
def test_time_to_quality_repeats_from_scratch(tmp_path, fake_libffm, capsys):
    ttq = _load_ttq()
    rng = np.random.default_rng(0)
    for name, rows in (("tr.ffm", 400), ("va.ffm", 100)):
        with open(tmp_path / name, "w") as f:
            for _ in range(rows):
                feats = rng.integers(0, 30, 4)
                f.write(f"{int(feats[0] < 12)} " + " ".join(f"{j}:{x}:1" for j, x in enumerate(feats)) + "\n")
    out = tmp_path / "ttq.json"
    rc = ttq.main(["--train", str(tmp_path / "tr.ffm"), "--valid", str(tmp_path / "va.ffm"),
                   "--libffm-dir", str(fake_libffm), "--repeat", "2", "--max-epochs", "3", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert [r["repeat"] for r in doc["repeats"]] == [1, 2]
    for r in doc["repeats"]:
        assert r["target_va_logloss"] == pytest.approx(0.45)      # the fake's third epoch
        assert len(r["runs"]["libffm"]["evals"]) == 3 and 1 <= len(r["runs"]["fmcli"]["evals"]) <= 3
        reached = r["fmcli_s"] is not None
        assert reached == (r["fmcli_best_va_logloss"] <= 0.45)
        assert (r["ratio"] is not None) == reached
    assert rc == (0 if all(r["fmcli_s"] for r in doc["repeats"]) else 1)
    # each tool with its own default threads: libffm -s 1, fmcli none given (auto)
    assert "time to quality, ffm k=4, each tool's default threads (libffm 1, fmcli auto), 2 repeats" \
        in capsys.readouterr().out
    for r in doc["repeats"]:
        assert " -s 1 " in r["runs"]["libffm"]["command"] and " -s " not in r["runs"]["fmcli"]["command"]
    assert not list(tmp_path.glob("*.bin")), "libffm's caches stay in the scratch directory"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("fm", path=str(Path(sys.executable).parent)) is None,
                    reason="needs the fm command next to this Python (an installed fmcli)")
def test_predict_against_libffm_alternates_whole_commands(tmp_path, fake_libffm, capsys):
    bench = _load_script("predict_vs_libffm")
    rng = np.random.default_rng(1)
    with open(tmp_path / "va.ffm", "w") as f:
        for _ in range(200):
            feats = rng.integers(0, 20, 3)
            f.write(f"{int(feats[0] < 9)} " + " ".join(f"{j}:{x}:1" for j, x in enumerate(feats)) + "\n")
    fm = str(Path(sys.executable).parent / "fm")
    subprocess.run([fm, "train", "-q", "-t", "1", "-o", str(tmp_path / "m.fm"), str(tmp_path / "va.ffm")], check=True)
    (tmp_path / "lf.model").write_text("fake libffm model\n")
    result = bench.main(["--data", str(tmp_path / "va.ffm"), "--fm-model", str(tmp_path / "m.fm"),
                         "--libffm-model", str(tmp_path / "lf.model"), "--libffm-dir", str(fake_libffm),
                         "--fm", fm, "--repeat", "2"])
    assert sorted(result["times"]) == ["fmcli", "fmcli -s 1", "libffm"]
    assert all(len(ts) == 2 and all(_number(t) and t > 0 for t in ts) for ts in result["times"].values())
    out = capsys.readouterr().out
    assert "libffm / fmcli:" in out and "libffm / fmcli -s 1:" in out
    assert f"# libffm: {fake_libffm / 'ffm-predict'} {tmp_path / 'va.ffm'}" in out


@pytest.mark.skipif(shutil.which("fm", path=str(Path(sys.executable).parent)) is None,
                    reason="needs the fm command next to this Python (an installed fmcli)")
def test_predict_against_libffm_refuses_what_it_cannot_run(tmp_path, fake_libffm):
    bench = _load_script("predict_vs_libffm")
    data = tmp_path / "va.ffm"
    data.write_text("1 0:1:1\n")
    base = ["--data", str(data), "--fm-model", str(data), "--libffm-model", str(data), "--repeat", "1"]
    with pytest.raises(SystemExit, match="ffm-predict: no executable"):
        bench.main(base + ["--libffm-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no file"):
        bench.main(["--data", str(tmp_path / "missing.ffm")] + base[2:] + ["--libffm-dir", str(fake_libffm)])
    # a command that fails (here: a data file given as the fmcli model) is named with its last line
    with pytest.raises(SystemExit, match=r"fm predict .* exited 65: fm: error"):
        bench.main(base + ["--libffm-dir", str(fake_libffm), "--fm", str(Path(sys.executable).parent / "fm")])


def test_compare_builds_cases():
    path = Path(BENCH).parent / "compare_builds.py"
    spec = importlib.util.spec_from_file_location("fmcli_compare_builds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_cases("ffm:4:1,fwfm:8:2:defaults") == [("ffm", 4, 1, ""), ("fwfm", 8, 2, "defaults")]
    for bad in ("ffm:4", "ffm:4:1:bias", "ffm:x:1", "ffm:4:1:defaults:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="MODEL:K:THREADS"):
            module.parse_cases(bad)
