"""fmcli: train and serve LR, FM, FFM, FwFM and FmFM click-through-rate models.

The public API is small::

    import fmcli
    model = fmcli.train(fmcli.Config(model="ffm", k=4), "train.ffm", valid="va.ffm")
    model.save("ctr.fm")
    p = fmcli.predict(fmcli.load_model("ctr.fm"), "test.ffm")

scikit-learn estimators and transformers live in ``fmcli.estimators`` and
``fmcli.transformers`` (the ``sklearn`` extra); ``fmcli.tune`` searches
hyperparameters; ``fmcli.get_include()`` is the folder of the C scorer
(fmscore.h) of the files ``fm convert MODEL --to inference`` writes.
Submodules are imported lazily so that ``import fmcli`` stays cheap.
"""

from ._version import __version__  # the one place the release version is written

__all__ = ["Config", "Model", "train", "predict", "load_model", "get_include", "__version__"]


def __getattr__(name):
    if name == "Config":
        from .config import Config as value
    elif name == "Model":
        from .model import Model as value
    elif name == "load_model":
        from .model import load_model as value
    elif name == "train":
        from .train import train as value
    elif name == "predict":
        from .predict import predict as value
    elif name == "get_include":   # the C scorer's folder (fmcli/include/fmscore.h)
        from .inference import get_include as value
    else:
        raise AttributeError(f"module 'fmcli' has no attribute {name!r}")
    # Importing the submodules fmcli.train / fmcli.predict binds them as
    # attributes of the package; the public names are the functions.
    globals()[name] = value
    return value
