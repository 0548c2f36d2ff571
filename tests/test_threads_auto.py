"""--threads auto (the default of fm train): every CPU on large data, one thread otherwise."""

import numpy as np
import pytest
from click.testing import CliRunner

import fmcli.config as config_module
from fmcli.cli import cli
from fmcli.config import AUTO_MAX_THREADS, AUTO_THREADS, AUTO_THREADS_ROWS, Config, threads_for
from fmcli.errors import ConfigError
from fmcli.model import load_model


def write_rows(path, n_rows, seed=0, n_fields=4, per_field=50):
    rng = np.random.default_rng(seed)
    feats = np.arange(n_fields) * per_field + rng.integers(0, per_field, size=(n_rows, n_fields))
    labels = (rng.random(n_rows) < 0.3).astype(int)
    cols = [np.char.add(np.char.add(f"{f}:", feats[:, f].astype(str)), ":1") for f in range(n_fields)]
    body = labels.astype(str)
    for c in cols:
        body = np.char.add(np.char.add(body, " "), c)
    path.write_text("\n".join(body.tolist()) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("threads")
    return {"small": write_rows(d / "small.ffm", 2_000), "large": write_rows(d / "large.ffm", AUTO_THREADS_ROWS)}


def fm(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)


@pytest.mark.parametrize("cpus, want", [(1, 1), (2, 2), (6, 6), (64, AUTO_MAX_THREADS)])
def test_auto_takes_every_cpu_on_large_data(monkeypatch, cpus, want):
    monkeypatch.setattr(config_module, "available_cpus", lambda: cpus)
    auto = Config(threads=AUTO_THREADS)
    assert threads_for(auto, AUTO_THREADS_ROWS) == want
    assert threads_for(auto, AUTO_THREADS_ROWS - 1) == 1
    # where Hogwild threads do not apply, or cost a model's memory each: one
    for other in ({"batch_size": 4}, {"scheduler": "local:2"}, {"device": "cuda"}, {"device": "auto"}):
        assert threads_for(auto.replace(**other), 10 * AUTO_THREADS_ROWS) == 1, other
    # a count given is kept
    assert threads_for(Config(threads=3), 10) == 3


def test_config_threads_zero_is_auto_and_negative_refused():
    assert Config(threads=0).threads == AUTO_THREADS
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        Config(threads=-1)


def test_default_is_auto_one_thread_on_small_data(files, tmp_path):
    r = fm("train", "-t", 1, "-o", tmp_path / "m.fm", files["small"])
    assert r.exit_code == 0, r.output
    assert "--threads auto" not in r.output
    assert load_model(str(tmp_path / "m.fm")).meta["hyperparameters"]["threads"] == 1


def test_default_is_auto_every_cpu_on_large_data(files, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "available_cpus", lambda: 2)
    r = fm("train", "-t", 1, "-o", tmp_path / "m.fm", files["large"])
    assert r.exit_code == 0, r.output
    assert "training on 2 threads (--threads auto" in r.output
    assert load_model(str(tmp_path / "m.fm")).meta["hyperparameters"]["threads"] == 2
    # -s 1 and an explicit auto
    r = fm("train", "-t", 1, "-s", 1, "-o", tmp_path / "one.fm", files["large"])
    assert r.exit_code == 0 and "--threads auto" not in r.output
    assert load_model(str(tmp_path / "one.fm")).meta["hyperparameters"]["threads"] == 1
    r = fm("train", "-t", 1, "-s", "AUTO", "-o", tmp_path / "auto.fm", files["large"])
    assert r.exit_code == 0 and "training on 2 threads" in r.output


def test_one_thread_runs_are_reproducible_and_auto_is_not_forced(files, tmp_path):
    # with -s 1 two runs give the same bytes; the default on small data is that run
    outs = []
    for name, extra in (("a", ["-s", 1]), ("b", ["-s", 1]), ("c", [])):
        r = fm("train", "-t", 2, "--seed", 3, *extra, "-o", tmp_path / f"{name}.fm", files["small"])
        assert r.exit_code == 0, r.output
        outs.append(load_model(str(tmp_path / f"{name}.fm")).params["factors"].tobytes())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_usage_errors(files, tmp_path, bad):
    r = fm("train", "-s", bad, "-o", tmp_path / "m.fm", files["small"])
    assert r.exit_code == 2 and "is not a thread count: give a positive integer or auto" in r.output
    assert not (tmp_path / "m.fm").exists()


def test_config_file_and_environment_take_auto(files, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "available_cpus", lambda: 2)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nthreads = "auto"\nepochs = 1\n')
    r = fm("train", "--config", cfg, "-o", tmp_path / "m.fm", files["large"])
    assert r.exit_code == 0 and "training on 2 threads" in r.output, r.output
    cfg.write_text("[train]\nthreads = 1\nepochs = 1\n")
    r = fm("train", "--config", cfg, "-o", tmp_path / "m.fm", files["large"])
    assert r.exit_code == 0 and "--threads auto" not in r.output, r.output
    r = fm("train", "-t", 1, "-o", tmp_path / "m.fm", files["large"], env={"FM_TRAIN_THREADS": "1"})
    assert r.exit_code == 0 and "--threads auto" not in r.output, r.output


def test_hot_features_on_small_data_name_the_threads(files, tmp_path):
    # --hot-features needs 2+ threads; auto chose one for small data: the error says so
    r = fm("train", "--hot-features", 8, "-o", tmp_path / "m.fm", files["small"])
    assert r.exit_code == 78 and "--threads 2 or more" in r.output, r.output
    assert not (tmp_path / "m.fm").exists()


def test_help_names_auto():
    r = fm("train", "--help")
    assert "-s, --threads AUTO|N" in r.output and "[default: auto]" in r.output


def test_tune_takes_auto_as_its_own_choice(files, tmp_path):
    # -s auto given to fm tune is the tuner's per-trial choice, as no -s is
    chosen = []
    for name, extra in (("none", []), ("auto", ["-s", "auto"])):
        d = tmp_path / name
        r = fm("tune", "--trials", 2, "--bracket", 2, "--max-epochs", 2, "--jobs", 1, "-q", *extra,
               "--dir", d, "-p", files["small"], "-o", tmp_path / f"{name}.fm", files["small"])
        assert r.exit_code == 0, r.output
        chosen.append(load_model(str(tmp_path / f"{name}.fm")).meta["hyperparameters"]["threads"])
    assert chosen[0] == chosen[1] >= 1
