"""The backend interface and the one factory that picks a backend.

The training orchestration (fmcli.train) talks to the parameters of a run
only through :class:`Backend`.  Two implementations: fmcli.cpu.CpuBackend
(the compiled core, in host memory) and fmcli.gpu.state.GpuState (CUDA
kernels, in device memory; imported only when a run asks for a GPU);
fmcli.distributed.DaskBackend trains the CPU layout on Dask workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .config import Config
from .data.batch import Batch
from .model import Model, ModelSpec


@runtime_checkable
class Backend(Protocol):
    """Parameters and optimizer state of one run, wherever they live."""

    device: str                 # "cpu" or "cuda"
    compact_rows: bool          # whether it reads compact batches (Dataset.in_memory(compact))
    spec: ModelSpec
    n_classes: int
    ns: int                     # optimizer-state slots per weight
    total_steps: int            # the run's length in steps (schedules, Adam's correction)

    def warm_start(self, parent: Model, path: str, say: Callable[[str], None]) -> int:
        """Take over `parent`'s weights (and state); returns the steps it had made."""

    def prepare(self, batch: Batch) -> str | None:
        """Once, with the first batch trained on (e.g. pick hot features); a note or None."""

    def train_slice(self, batch: Batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int) -> tuple[float, float, int, int]:
        """Train on the rows `order` of batch, the first being step step0 of the
        run: (weighted loss sum, weight sum, rows skipped, position in `order` of
        the row that stopped it or -1)."""

    def scores(self, batch: Batch, threads: int) -> np.ndarray:
        """Raw scores: (n,), or (n, C) for multiclass."""

    def export_state(self) -> tuple[np.ndarray, ...]:
        """Host arrays B, L, F, R of the training layout (checkpoints)."""

    def snapshot(self, into=None) -> tuple[np.ndarray, ...]:
        """A copy of the parameters and state (the best epoch's for early
        stopping); `into`, an earlier snapshot that is no longer needed, may
        be written over instead of allocating another."""

    def restore(self, arrays) -> None:
        """Set parameters and state from export_state()'s or snapshot()'s arrays."""

    def all_finite(self) -> bool: ...

    def to_model(self, meta: dict) -> Model: ...


def bytes_needed(config: Config, n_features: int, n_fields: int, n_classes: int = 1) -> int:
    """Memory a run's parameters and state take (on any device)."""
    from .params import HostParams

    return HostParams.bytes_needed(config, n_features, n_fields, n_classes)


def make_backend(config: Config, n_features: int, n_fields: int, rng: np.random.Generator, task: str,
                 classes, say: Callable[[str], None], slot_ids: np.ndarray | None = None,
                 id_space: int = 0, device_need: int | None = None) -> Backend:
    """The backend of a run, its parameters initialised from rng.

    slot_ids: the original ids of a new model of compact ids (n_features
    slots), from `id_space` ids: on the CPU it starts as the dense model would.

    --device cuda / auto import fmcli.gpu (CuPy) here and nowhere else in
    training; auto falls back to the CPU, saying why, when no device (or
    kernel build) works.  A scheduler (--scheduler, --scheduler-file) gives
    fmcli.distributed's backend: the CPU layout trained in rounds of Dask tasks.
    device_need: the device memory the run takes on a GPU (checked before
    anything is allocated there; fmcli.gpu.plan.device_memory)."""
    from .cpu import new_cpu_backend

    if config.scheduler is not None or config.scheduler_file is not None:
        # many CPUs through Dask (imported there, and only for such a run)
        from .distributed import new_dask_backend

        return new_dask_backend(config, n_features, n_fields, rng, task, classes, say, slot_ids, id_space)
    if config.device != "cpu":
        from .errors import DeviceError
        from .gpu.device import resolve

        if resolve(config.device, say) == "cuda":
            from .gpu.state import GpuState

            try:
                return GpuState(config, n_features, n_fields, rng, task, classes, need=device_need)
            except DeviceError as exc:
                if config.device != "auto":
                    raise
                say(f"device auto: {exc}; running on the CPU")
    return new_cpu_backend(config, n_features, n_fields, rng, task, classes, slot_ids, id_space)
