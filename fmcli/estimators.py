"""scikit-learn estimators: a classifier and a regressor for every model kind.

For each kind of :data:`fmcli.registry.KINDS` this module defines a
classifier (binary and multiclass) and a regressor, named after the kind:
``LRClassifier``, ``LRRegressor``, ``FMClassifier``, ``FMRegressor``,
``FFMClassifier``, ``FFMRegressor``, ``FwFMClassifier``, ``FwFMRegressor``,
``FmFMClassifier``, ``FmFMRegressor`` (a new kind gets its pair here
without a line of code)::

    from fmcli.estimators import FFMClassifier
    clf = FFMClassifier(k=8, epochs=5).fit(X, y)     # X: array, CSR or DataFrame
    clf.predict_proba(X_test)
    clf.save("ctr.fm")                               # fm predict ctr.fm test.ffm

Parameters.  Every training hyperparameter of :class:`fmcli.config.Config`
is a constructor parameter of the same name with Config's default (the
``__init__`` signatures are generated from Config's fields, so they cannot
drift; ``fm train --help`` describes each).  Config's file and command-line
settings (input format, caches, checkpoints, label columns, ...) are not.
scikit-learn's own parameters:

* ``fields``: None (one field per column), for arrays an integer array of
  one field per column (one-hot CSR: every column of a variable in its
  field), for DataFrames a list of column names or a dict
  ``{column: field}`` (see :func:`fmcli.data.inmemory.as_batch`).
* ``class_weight`` (classifiers): None, ``"balanced"`` (weights
  n_rows / (n_classes * count), as scikit-learn computes them) or a dict
  ``{label: weight}``; handed to Config.class_weight, so the model file
  records it.  ``partial_fit`` accepts a dict only.
* ``warm_start``: a second ``fit`` continues from the model of the first
  (its weights and optimizer state) instead of starting anew.
* ``validation_fraction``: None, or the fraction of the rows held out
  (stratified for classifiers) to validate on after every epoch; with
  ``patience`` > 0 training stops early and keeps the best epoch's model.
  ``fit(..., eval_set=(X_val, y_val))`` gives the validation rows instead.
* ``random_state``: the seed of the initial weights, the row order and the
  validation split.  None means 0 (not a fresh seed each time): a fit is
  reproducible unless asked otherwise; a ``RandomState`` draws a seed.
* ``n_jobs``: training and scoring threads; None means 1 (bit-for-bit
  reproducible), -1 every CPU, -2 all but one, ...
* ``device``: Config's (``cpu``, ``cuda`` or ``auto``): where training
  runs; predictions are scored on the CPU with ``n_jobs`` threads.
* ``scheduler``, ``scheduler_file``, ``scheduler_timeout``, ``min_workers``,
  ``rows_per_round``, ``syncs_per_epoch``: Config's, as ``fm train
  --scheduler ...``: the fit trains data-parallel on a Dask cluster
  (``"local:2"``: two worker processes started for the fit and closed
  after it; an address such as ``"tcp://host:8786"``: a running cluster),
  ``n_jobs`` threads per worker; predictions are scored here.  Needs
  ``pip install 'fm-ctr[dask]'``.
* ``verbose``: 0 quiet; 1 or more prints the run's notes and a line per
  epoch to stderr.

Labels.  Classifiers take any labels; ``classes_`` is ``np.unique(y)``.
Two classes train a binary model (``classes_[1]`` is the positive class),
three or more a multiclass one whose model file names each class
``str(label)``.  Regressors take numbers.

Fitted attributes: ``model_`` (the :class:`fmcli.model.Model`),
``classes_``, ``n_features_in_``, ``feature_names_in_`` (DataFrames with
string column names), ``n_iter_`` (epochs run by the last fit or
partial_fit) and ``best_iteration_`` (the epoch kept by early stopping, or
None).  What the estimator needs besides the model (its classes and their
dtype, the fields, the DataFrame's schema) is stored in the model file's
header, so :meth:`save` / :meth:`load` and pickling (which carries the
model file's bytes and the constructor parameters) round-trip, and a model
trained by ``fm train`` loads as a fitted estimator of its kind and task.

Data never goes through a file: arrays and CSR matrices become a Batch in
memory (:func:`fmcli.data.inmemory.as_batch`, zero-copy for float32 CSR
with int32 indices) that the training core reads directly.

scikit-learn is an optional extra: without it, importing this module is an
ImportError that names the extra to install.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import sys
from collections.abc import Mapping

import numpy as np

from .config import Config, available_cpus
from .errors import ConfigError, DataError
from .registry import KINDS

EXTRA = "pip install 'fm-ctr[sklearn]'"

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data
except ImportError:
    raise ImportError(f"the fmcli estimators need scikit-learn, an optional extra: {EXTRA}") from None

# Config fields that are not constructor parameters: what each class fixes
# (model, task), what scikit-learn names its own way (threads: n_jobs, seed:
# random_state, class_weight in scikit-learn's form), a command-line
# shorthand (auto_stop is patience=1), and the settings of reading files,
# caches and checkpoints.  (The Dask settings -- scheduler, scheduler_file,
# scheduler_timeout, rows_per_round, ... -- are parameters: a fit can train
# on a cluster.)
NOT_PARAMETERS = frozenset({
    "model", "task", "threads", "seed", "class_weight", "auto_stop",
    "format", "max_bad_rows", "max_line_bytes", "max_feature_id",
    "cache", "cache_dir", "cache_check", "cache_max_size", "memory_budget",
    "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "init_model",
    "label_column", "weight_column", "columns",
})

# Config's Dask settings: a model written by fm train --scheduler loads as
# an estimator that fits in this process (its cluster may be long gone, and
# rows_per_round and syncs_per_epoch apply only with a scheduler).
WHERE_TRAINED = frozenset({
    f.name for f in dataclasses.fields(Config)
    if f.name.startswith("scheduler") or f.name in ("min_workers", "rows_per_round", "syncs_per_epoch")
})

# The training hyperparameters, in Config's order, with Config's defaults.
CONFIG_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in dataclasses.fields(Config) if f.name not in NOT_PARAMETERS
}

# scikit-learn's parameters (after Config's in the signature).
CLASSIFIER_EXTRAS = {"fields": None, "class_weight": None, "warm_start": False, "validation_fraction": None,
                     "random_state": None, "n_jobs": None, "verbose": 0}
REGRESSOR_EXTRAS = {k: v for k, v in CLASSIFIER_EXTRAS.items() if k != "class_weight"}

# the model header's key for what the estimator adds to the model
META_KEY = "estimator"


def _is_frame(X) -> bool:
    """A pandas or polars DataFrame whose column names are all strings: read
    by column name (another frame is an array to scikit-learn, and here)."""
    module = (type(X).__module__ or "").split(".")[0]
    if module not in ("pandas", "polars") or type(X).__name__ != "DataFrame":
        return False
    return all(isinstance(c, str) for c in X.columns)


def _take_rows(batch, rows: np.ndarray):
    """The rows `rows` (indices, in that order) of a Batch, as a new Batch."""
    from .data.batch import Batch

    rows = np.asarray(rows, np.int64)
    starts = batch.indptr[rows]
    lengths = batch.indptr[rows + 1] - starts
    indptr = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    entries = np.arange(int(indptr[-1]), dtype=np.int64) + np.repeat(starts - indptr[:-1], lengths)
    return Batch(labels=batch.labels[rows], indptr=indptr, fields=batch.fields[entries],
                 features=batch.features[entries], values=batch.values[entries],
                 weights=None if batch.weights is None else batch.weights[rows])


def _threads(n_jobs) -> int:
    """n_jobs as a thread count: None 1, -1 every CPU, -2 all but one, ..."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None or a non-zero integer, got {n_jobs!r}")
    return int(n_jobs) if n_jobs > 0 else max(1, available_cpus() + 1 + int(n_jobs))


def _seed(random_state) -> int:
    """random_state as Config's seed: None 0, an int itself, a RandomState a draw."""
    if random_state is None:
        return 0
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _plain(value):
    """A parameter value as JSON can hold it (None when it cannot)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def _class_array(values: list, dtype: str) -> np.ndarray:
    """classes_ as stored in the header: values and their dtype."""
    if dtype == "object":
        out = np.empty(len(values), object)
        out[:] = values
        return out
    return np.asarray(values, dtype=np.dtype(dtype))


class _FMEstimator(BaseEstimator):
    """What the classifiers and regressors share: parameters to Config,
    data to Batches, training, scoring, files and pickling."""

    _kind: str | None = None       # the model kind (fmcli.registry) of a concrete class

    # -- configuration ------------------------------------------------------------
    def _config(self, task: str, class_weight: str | None = None, **changes) -> Config:
        """The Config of a run (parameters validated by Config; its errors as ValueError)."""
        params = {name: getattr(self, name) for name in CONFIG_DEFAULTS}
        params.update(changes)
        if self.validation_fraction is not None and not (
                isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be None or a number in (0, 1), got "
                             f"{self.validation_fraction!r}")
        try:
            return Config(model=self._kind, task=task, class_weight=class_weight, threads=_threads(self.n_jobs),
                          seed=_seed(self.random_state), cache=False, **params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        except TypeError as exc:   # a value of the wrong type, compared with a number
            raise ValueError(f"invalid parameter value: {exc}") from None

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr)

    def _on_epoch(self, stats) -> None:
        if not self.verbose:
            return
        loss = "-" if stats.train_loss is None else f"{stats.train_loss:.6f}"
        valid = "".join(f" valid_{k} {v:.6f}" for k, v in (stats.valid or {}).items() if v is not None)
        print(f"epoch {stats.epoch}: train loss {loss}{valid} ({stats.seconds:.2f} s)", file=sys.stderr)

    # -- data -----------------------------------------------------------------------
    def _fitted_meta(self) -> dict:
        return self.model_.meta.get(META_KEY) or {}

    def _schema(self):
        """The FrameSchema of the frame the model was fitted on, or None."""
        from .data.inmemory import FrameSchema

        m = self.model_.meta.get("input")
        if isinstance(m, Mapping) and m.get("layout") == "wide":
            return FrameSchema.from_map(m)
        return None

    @staticmethod
    def _check_weights(sample_weight, n_rows: int) -> np.ndarray | None:
        """sample_weight as a float64 array of one finite weight >= 0 per row, not all zero."""
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != n_rows:
            raise ValueError(f"sample_weight must hold one weight per row: shape ({n_rows},) expected, "
                             f"got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample_weight must be finite and >= 0")
        if not np.any(w > 0):
            raise ValueError("every sample_weight is zero: at least one row needs a positive weight")
        return w

    def _check_X_y(self, X, y, reset: bool):
        """X and y checked as scikit-learn checks them (feature names, column
        count, shapes); a DataFrame with string column names stays a frame."""
        if _is_frame(X):
            validate_data(self, X, reset=reset, skip_check_array=True)
            if y is None:
                raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, "
                                 "but the target y is None.")
            y = column_or_1d(y, warn=True)
            check_consistent_length(X, y)
            return X, y
        return validate_data(self, X, y, reset=reset, accept_sparse="csr", dtype=(np.float32, np.float64),
                             y_numeric=not isinstance(self, ClassifierMixin))

    def _to_batch(self, X, labels=None, sample_weight=None, *, fitting: bool = False):
        """(Batch, FrameSchema or None) of checked X: at fit time with the
        `fields` parameter, later with what the model was fitted on."""
        from .data.inmemory import as_batch

        if fitting:
            fields = self.fields
            if fields is not None and not _is_frame(X) and not isinstance(fields, (Mapping, str)):
                fields = np.asarray(fields)
            return as_batch(X, labels, sample_weight=sample_weight, fields=fields,
                            hash_bits=self.hash_bits, float_columns=self.float_columns)
        schema = self._schema()
        if schema is not None:
            return as_batch(X, labels, sample_weight=sample_weight, schema=schema)
        fields = self._fitted_meta().get("fields")
        return as_batch(X, labels, sample_weight=sample_weight,
                        fields=None if fields is None else np.asarray(fields, np.int64))

    def _check_predict_X(self, X):
        """X of a prediction, checked against the fitted model, as a Batch."""
        check_is_fitted(self, "model_")
        if self._schema() is not None or _is_frame(X):
            # a frame keeps its columns (by name) for a model fitted on one
            validate_data(self, X, reset=False, skip_check_array=True)
            if self._schema() is None:   # frame given to an array model: its values by position
                X = validate_data(self, np.asarray(X), reset=False, accept_sparse="csr",
                                  dtype=(np.float32, np.float64))
        else:
            X = validate_data(self, X, reset=False, accept_sparse="csr", dtype=(np.float32, np.float64))
        batch, _ = self._to_batch(X)
        return batch

    # -- training --------------------------------------------------------------------
    def _split(self, batch, stratify: np.ndarray | None, seed: int):
        """(training rows, validation rows) of validation_fraction."""
        from sklearn.model_selection import train_test_split

        rows = np.arange(batch.n_rows)
        tr, va = train_test_split(rows, test_size=self.validation_fraction, random_state=seed,
                                  stratify=stratify)
        return _take_rows(batch, np.sort(tr)), _take_rows(batch, np.sort(va))

    def _eval_batch(self, eval_set, encode):
        """The Batch of fit's eval_set: (X_val, y_val) or a list of one such pair."""
        if isinstance(eval_set, list):
            if len(eval_set) != 1:
                raise ValueError(f"eval_set must be (X_val, y_val) or a list of one such pair, "
                                 f"got a list of {len(eval_set)}")
            eval_set = eval_set[0]
        if not isinstance(eval_set, tuple) or len(eval_set) != 2:
            raise ValueError("eval_set must be (X_val, y_val) or a list of one such pair")
        Xv, yv = eval_set
        if _is_frame(Xv) != (self._fit_schema is not None):
            raise ValueError("eval_set's X must be of the same kind as fit's X (a DataFrame or an array)")
        if not _is_frame(Xv):
            Xv = validate_data(self, Xv, reset=False, accept_sparse="csr", dtype=(np.float32, np.float64))
        yv = column_or_1d(yv, warn=True)
        check_consistent_length(Xv, yv)
        from .data.inmemory import as_batch

        labels = encode(yv)
        if self._fit_schema is not None:
            return as_batch(Xv, labels, schema=self._fit_schema)[0]
        return as_batch(Xv, labels, fields=self._fit_fields)[0]

    def _run(self, config: Config, batch, valid, parent, classes=None):
        """fmcli.train.train on Batches, its errors as ValueError."""
        from .train import train

        try:
            return train(config, batch, valid, parent=parent, classes=classes, log=self._say,
                         on_epoch=self._on_epoch)
        except (ConfigError, DataError) as exc:
            raise ValueError(str(exc)) from None

    def _fit_batches(self, X, y, labels, sample_weight, eval_set, encode, stratify, *, incremental: bool,
                     reset: bool):
        """(training Batch, validation Batch or None) of a fit or partial_fit;
        sets self._fit_schema and self._fit_fields for the model's header."""
        if incremental and not reset:
            batch, _ = self._to_batch(X, labels, sample_weight)
            self._fit_schema, self._fit_fields = self._schema(), self._fitted_meta().get("fields")
            return batch, None
        batch, schema = self._to_batch(X, labels, sample_weight, fitting=True)
        self._fit_schema = schema
        self._fit_fields = None
        if schema is None and self.fields is not None:
            self._fit_fields = np.asarray(self.fields, np.int64).tolist()
        if incremental:
            return batch, None
        if eval_set is not None and self.validation_fraction is not None:
            raise ValueError("give eval_set or validation_fraction, not both")
        if eval_set is not None:
            return batch, self._eval_batch(eval_set, encode)
        if self.validation_fraction is not None:
            return self._split(batch, stratify, _seed(self.random_state))
        return batch, None

    def _store(self, model, meta: dict) -> None:
        """Record in the model what the estimator needs besides it, and adopt it."""
        meta = {"class": type(self).__name__, "n_features_in": int(self.n_features_in_),
                "feature_names_in": (None if getattr(self, "feature_names_in_", None) is None
                                     else [str(c) for c in self.feature_names_in_]),
                "fields": self._fit_fields if self._fit_schema is None else None,
                "params": {k: _plain(v) for k, v in self.get_params().items() if k != "class_weight"},
                **meta}
        model.meta[META_KEY] = meta
        if self._fit_schema is not None:
            model.meta["input"] = self._fit_schema.to_map()
        del self._fit_schema, self._fit_fields
        self._adopt(model)

    def _adopt(self, model) -> None:
        """Take `model` as the fitted model: the fitted attributes from it."""
        meta = model.meta.get(META_KEY) or {}
        self.model_ = model
        self._scorers = {}
        if meta.get("n_features_in") is not None:
            self.n_features_in_ = int(meta["n_features_in"])
        else:   # a model trained by fm train: its features are X's columns
            self.n_features_in_ = int((model.meta.get("features") or {}).get("id_space")
                                      or model.spec.n_features)
        names = meta.get("feature_names_in")
        if names is None:
            schema = self._schema()
            names = list(schema.feature_names) if schema is not None else None
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
            self.n_features_in_ = len(names)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        training = model.meta.get("training") or {}
        self.n_iter_ = training.get("epochs_run")
        stopped = training.get("early_stopping_metric") and (model.meta.get("hyperparameters") or {}).get("patience")
        self.best_iteration_ = training.get("best_epoch") if stopped else None

    # -- scoring ---------------------------------------------------------------------
    def _raw_scores(self, X) -> np.ndarray:
        """Raw scores of X: (n,), or (n, C) for a multiclass model."""
        from .predict import Scorer, check_scores, with_slots

        batch = self._check_predict_X(X)
        model = self.model_
        id_map = model.id_map()
        if id_map is not None:
            batch = with_slots(batch, id_map)
        threads = _threads(self.n_jobs)
        scorer = self._scorers.get(threads)
        if scorer is None:
            scorer = self._scorers[threads] = Scorer(model, threads)
        scores = scorer.scores(batch)
        try:
            check_scores(model, scores, batch, None)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        return scores

    # -- files and pickling ------------------------------------------------------------
    def save(self, path, *, include_state: bool = True) -> None:
        """Write the fitted model's file (``fm predict`` and ``fm inspect``
        read it; :meth:`load` makes it an estimator again).  include_state:
        keep the optimizer state for warm starts (smaller without)."""
        check_is_fitted(self, "model_")
        self.model_.save(path, include_state=include_state)

    @classmethod
    def load(cls, path, *, fields=None):
        """A fitted estimator of the model file at `path`: of the class that
        saved it, or for a model trained by ``fm train`` of its kind and task
        (classes_: its classes, or [0, 1] for a binary model).  fields: for
        such a model, the field of each column of X (default: the column's
        number), as fit's ``fields``.  Called on a concrete class the file
        must hold a model of that class."""
        from .model import load_model

        model = load_model(path, mmap=False)
        target = estimator_class(model.spec.kind, model.spec.task)
        if cls._kind is not None and cls is not target:
            raise ValueError(f"{path} holds a {model.spec.kind} {model.spec.task} model: load it with "
                             f"{target.__name__}.load (or fmcli.estimators.load)")
        return target._from_model(model, fields)

    @classmethod
    def _from_model(cls, model, fields=None):
        meta = model.meta.get(META_KEY)
        if meta is None:      # trained by fm train: describe it as fit would have
            hp = model.meta.get("hyperparameters") or {}
            params = {k: hp[k] for k in CONFIG_DEFAULTS if k in hp and k not in WHERE_TRAINED}
            if params.get("optimizer") == "ftrl":
                params["learning_rate"] = None      # the header's learning_rate is FTRL's alpha
            params["random_state"] = hp.get("seed")
            classes = list(model.spec.classes) if model.spec.task == "multiclass" else [0, 1]
            model.meta[META_KEY] = meta = {
                "class": cls.__name__, "n_features_in": None, "feature_names_in": None,
                "fields": None if fields is None else np.asarray(fields, np.int64).tolist(),
                "params": params, "classes": classes,
                "classes_dtype": "object" if model.spec.task == "multiclass" else "int64"}
        params = {k: v for k, v in (meta.get("params") or {}).items() if k in cls._param_names()}
        est = cls(**params)
        if "class_weight" in meta and "class_weight" in cls._param_names():
            pairs = meta["class_weight"]
            est.class_weight = dict(pairs) if isinstance(pairs, list) else pairs
        if meta.get("fields") is not None:     # an array's fields (a frame's are in its schema)
            est.fields = np.asarray(meta["fields"], np.int64)
        est._adopt(model)
        return est

    @classmethod
    def _param_names(cls) -> list[str]:
        return cls._get_param_names()

    def __getstate__(self):
        """The constructor parameters and, when fitted, the model file's bytes."""
        state = {name: getattr(self, name) for name in self._param_names()}
        if hasattr(self, "model_"):
            state["_model_file"] = self.model_.to_bytes()
        return state

    def __setstate__(self, state):
        from .model import Model

        state = dict(state)
        data = state.pop("_model_file", None)
        state.pop("_sklearn_version", None)
        self.__dict__.update(state)
        if data is not None:
            self._adopt(Model.from_bytes(data))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class _ClassifierBase(ClassifierMixin, _FMEstimator):
    """A binary or multiclass classifier of one model kind."""

    def _class_names(self) -> list[str]:
        """The model file's name of each class (multiclass): str(label)."""
        names = [str(c) for c in self.classes_]
        if len(set(names)) < len(names):
            names = [repr(c) for c in self.classes_]
        if len(set(names)) < len(names):
            names = [str(i) for i in range(len(names))]
        return names

    def _encode(self, y) -> np.ndarray:
        """Labels as the kernels take them: 0/1 (binary) or class indices."""
        y = np.asarray(y)
        index = np.searchsorted(self.classes_, y)
        index = np.minimum(index, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if np.any(unknown):
            bad = y[np.asarray(unknown, bool)][0]
            raise ValueError(f"y holds label {bad!r}, which is not one of the classes {self.classes_.tolist()}")
        return index.astype(np.float32)

    def _class_weight_spec(self, incremental: bool) -> str | None:
        """class_weight in Config's form: 'balanced', or INDEX=WEIGHT,... (binary: 0/1)."""
        cw = self.class_weight
        if cw is None:
            return None
        if isinstance(cw, str):
            if cw != "balanced":
                raise ValueError(f"class_weight must be None, 'balanced' or a dict {{label: weight}}, got {cw!r}")
            if incremental:
                raise ValueError("class_weight 'balanced' needs every row at once: it is not supported by "
                                 "partial_fit; give a dict {label: weight} (e.g. from "
                                 "sklearn.utils.class_weight.compute_class_weight)")
            return "balanced"
        if not isinstance(cw, Mapping):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict {{label: weight}}, got {cw!r}")
        names = ["0", "1"] if len(self.classes_) == 2 else self._class_names()
        parts = []
        for label, weight in cw.items():
            hits = np.flatnonzero(self.classes_ == label) if np.ndim(label) == 0 else []
            if len(hits) == 0:
                raise ValueError(f"class_weight names label {label!r}, which is not one of the classes "
                                 f"{self.classes_.tolist()}")
            try:
                parts.append(f"{names[int(hits[0])]}={float(weight)!r}")
            except (TypeError, ValueError):
                raise ValueError(f"class_weight of {label!r} must be a number, got {weight!r}") from None
        return ",".join(parts) or None

    def _fit(self, X, y, sample_weight, eval_set, *, incremental: bool, classes=None):
        first = not hasattr(self, "model_") or not (incremental or self.warm_start)
        X, y = self._check_X_y(X, y, reset=first)
        check_classification_targets(y)
        if first:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit "
                                 "(every label the model will see)")
            found = np.unique(y if classes is None else np.asarray(classes))
            if len(found) < 2:
                raise ValueError(f"y holds one class only ({found.tolist()}); a classifier needs at "
                                 "least two classes")
            self.classes_ = found
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from the classes of the "
                             f"earlier calls {self.classes_.tolist()}")
        labels = self._encode(y)
        sample_weight = self._check_weights(sample_weight, labels.shape[0])
        if sample_weight is not None and not incremental and np.unique(labels[sample_weight > 0]).size < 2:
            raise ValueError("sample_weight leaves rows of one class only (the others weigh 0); "
                             "a classifier needs at least two classes")
        binary = len(self.classes_) == 2
        task = "binary" if binary else "multiclass"
        changes = {"epochs": 1, "patience": 0, "eval_every": 0} if incremental else {}
        config = self._config(task, self._class_weight_spec(incremental), **changes)
        batch, valid = self._fit_batches(X, y, labels, sample_weight, eval_set, self._encode, labels,
                                         incremental=incremental, reset=first)
        parent = None if first else self.model_
        if config.patience and valid is None:
            raise ValueError("patience > 0 (early stopping) needs validation rows: give fit an eval_set "
                             "or set validation_fraction")
        model = self._run(config, batch, valid, parent, None if binary else self._class_names())
        cw = self.class_weight
        self._store(model, {
            "classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes_.tolist()],
            "classes_dtype": "object" if self.classes_.dtype.kind == "O" else self.classes_.dtype.str,
            "class_weight": ([[_plain(k), _plain(v)] for k, v in cw.items()] if isinstance(cw, Mapping)
                             else cw)})
        return self

    def _adopt(self, model) -> None:
        super()._adopt(model)
        meta = model.meta.get(META_KEY) or {}
        self.classes_ = _class_array(meta["classes"], meta.get("classes_dtype", "object"))

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Train on X and labels y (any labels: classes_ = np.unique(y)).
        sample_weight: one weight >= 0 per row.  eval_set: (X_val, y_val)
        validated after every epoch (early stopping with patience > 0).
        With warm_start, continue from the model of the previous fit."""
        return self._fit(X, y, sample_weight, eval_set, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over X, y continuing from the model so far (weights and
        optimizer state): N calls on consecutive parts of the data train as
        one epoch over all of them does (shuffle=False, n_jobs=1).  classes:
        every label, required on the first call."""
        return self._fit(X, y, sample_weight, None, incremental=True, classes=classes)

    def decision_function(self, X) -> np.ndarray:
        """Raw scores: (n,) log-odds of classes_[1] (binary), or (n, n_classes)."""
        return self._raw_scores(X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n, n_classes) in the order of classes_."""
        from .metrics import sigmoid, softmax

        scores = self._raw_scores(X)
        if scores.ndim == 1:
            p = sigmoid(scores)
            return np.column_stack([1.0 - p, p])
        return softmax(scores)

    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        scores = self._raw_scores(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[index]


class _RegressorBase(RegressorMixin, _FMEstimator):
    """A regressor of one model kind (squared loss)."""

    def _fit(self, X, y, sample_weight, eval_set, *, incremental: bool):
        first = not hasattr(self, "model_") or not (incremental or self.warm_start)
        X, y = self._check_X_y(X, y, reset=first)
        y = np.asarray(y, np.float64)
        sample_weight = self._check_weights(sample_weight, y.shape[0])

        def encode(values):
            return np.asarray(values, np.float64)

        changes = {"epochs": 1, "patience": 0, "eval_every": 0} if incremental else {}
        config = self._config("regression", **changes)
        batch, valid = self._fit_batches(X, y, y, sample_weight, eval_set, encode, None,
                                         incremental=incremental, reset=first)
        if config.patience and valid is None:
            raise ValueError("patience > 0 (early stopping) needs validation rows: give fit an eval_set "
                             "or set validation_fraction")
        model = self._run(config, batch, valid, None if first else self.model_)
        self._store(model, {})
        return self

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Train on X and targets y.  sample_weight: one weight >= 0 per row.
        eval_set: (X_val, y_val) validated after every epoch (early stopping
        with patience > 0).  With warm_start, continue from the previous fit."""
        return self._fit(X, y, sample_weight, eval_set, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y continuing from the model so far (weights and
        optimizer state)."""
        return self._fit(X, y, sample_weight, None, incremental=True)

    def predict(self, X) -> np.ndarray:
        return self._raw_scores(X)


# -- the classes, generated from the registry and Config -------------------------------

def class_prefix(kind: str) -> str:
    """The class-name prefix of a model kind: lr -> LR, fm -> FM, ffm -> FFM,
    fwfm -> FwFM, fmfm -> FmFM."""
    if kind.endswith("fm"):
        return kind[:-2].capitalize() + "FM"
    return kind.upper()


def _make_init(qualname: str, defaults: dict[str, object]):
    """An __init__ with one explicit keyword parameter per entry of
    `defaults` that stores each (scikit-learn reads the signature and
    wants parameters stored as given)."""
    args = ", ".join(f"{name}=_defaults[{name!r}]" for name in defaults)
    body = "\n".join(f"    self.{name} = {name}" for name in defaults)
    namespace = {"_defaults": dict(defaults)}
    exec(f"def __init__(self, *, {args}):\n{body}\n", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{qualname}.__init__"
    init.__module__ = __name__
    return init


_DOC = """{title} {what} (scikit-learn estimator).

The {kind} model of fmcli trained for the {tasks} task{s}.  Every training
hyperparameter of :class:`fmcli.config.Config` is a parameter of the same
name and default; {extras} are scikit-learn's (see :mod:`fmcli.estimators`).
"""

CLASSES: dict[tuple[str, str], type] = {}     # (kind, "classifier" | "regressor") -> class


def estimator_class(kind: str, task: str) -> type:
    """The estimator class of a model kind and task (binary, multiclass, regression)."""
    return CLASSES[(kind, "regressor" if task == "regression" else "classifier")]


def load(path, *, fields=None):
    """A fitted estimator of a model file, of the class of its kind and task
    (see :meth:`_FMEstimator.load`)."""
    return _FMEstimator.load(path, fields=fields)


__all__ = ["load", "estimator_class", "CLASSES", "CONFIG_DEFAULTS"]

for _kind, _entry in KINDS.items():
    for _family, _base, _extras in (("classifier", _ClassifierBase, CLASSIFIER_EXTRAS),
                                    ("regressor", _RegressorBase, REGRESSOR_EXTRAS)):
        _name = class_prefix(_kind) + _family.capitalize()
        _defaults = {**CONFIG_DEFAULTS, **_extras}
        _cls = type(_name, (_base,), {
            "_kind": _kind,
            "__init__": _make_init(_name, _defaults),
            "__module__": __name__,
            "__qualname__": _name,
            "__doc__": _DOC.format(title=_entry.title[0].upper() + _entry.title[1:], what=_family,
                                   kind=_kind, tasks="binary and multiclass" if _family == "classifier"
                                   else "regression", s="s" if _family == "classifier" else "",
                                   extras=", ".join(_extras)),
        })
        globals()[_name] = _cls
        CLASSES[(_kind, _family)] = _cls
        __all__.append(_name)

del _kind, _entry, _family, _base, _extras, _name, _defaults, _cls
