"""fmcli: train and serve LR, FM and FFM click-through-rate models.

The public API is small::

    import fmcli
    model = fmcli.train(fmcli.Config(model="ffm", k=4), "train.ffm", valid="va.ffm")
    model.save("ctr.fm")
    p = fmcli.predict(fmcli.load_model("ctr.fm"), "test.ffm")

Submodules are imported lazily so that ``import fmcli`` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["Config", "Model", "train", "predict", "load_model", "__version__"]


def __getattr__(name):
    if name == "Config":
        from .config import Config

        return Config
    if name == "Model":
        from .model import Model

        return Model
    if name == "load_model":
        from .model import load_model

        return load_model
    if name == "train":
        from .train import train

        return train
    if name == "predict":
        from .predict import predict

        return predict
    raise AttributeError(f"module 'fmcli' has no attribute {name!r}")
