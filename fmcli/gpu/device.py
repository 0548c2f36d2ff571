"""Finding a CUDA device, and the CuPy backend.

CuPy is imported here, inside functions, and only when --device cuda or
auto asks for it.  Detection can be slow where a driver is installed but no
device works, so it runs once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from .._version import DISTRIBUTION
from ..errors import DeviceError
from .layout import kernel_names, load_source

INSTALL_HINT = f"install CuPy for your CUDA version, e.g. pip install '{DISTRIBUTION}[gpu]'"


@lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(usable, the device's name or why not)."""
    try:
        import cupy
    except ImportError:
        return False, f"CuPy is not installed ({INSTALL_HINT})"
    except Exception as exc:  # a broken install: CUDA libraries missing, ...
        return False, f"CuPy failed to load ({_one_line(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no usable CUDA driver or device ({_one_line(exc)})"
    if count < 1:
        return False, "no CUDA device found"
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "CUDA device 0"
    return True, name


def resolve(requested: str, log: Callable[[str], None] | None = None) -> str:
    """The device to run on for --device `requested`: 'cpu' or 'cuda'.

    cuda without a usable device raises DeviceError; auto falls back to the
    CPU and says so through `log`."""
    say = log or (lambda msg: None)
    if requested == "cpu":
        return "cpu"
    ok, what = probe()
    if ok:
        say(f"device: {what} (CUDA)")
        return "cuda"
    if requested == "cuda":
        raise DeviceError(f"device cuda is not available: {what}; --device auto falls back to the CPU")
    say(f"device auto: {what}; running on the CPU")
    return "cpu"


def free_memory() -> tuple[int | None, str]:
    """(free bytes on device 0, its name), or (None, why no device is usable)."""
    ok, what = probe()
    if not ok:
        return None, what
    try:
        import cupy

        return int(cupy.cuda.Device(0).mem_info[0]), what
    except Exception as exc:
        return None, f"its free memory is unknown ({_one_line(exc)})"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class CupyBackend:
    """Device arrays (CuPy), kernels compiled at run time by NVRTC (one
    RawModule per float type and padded k, cached on disk by CuPy)."""

    name = "cuda"
    blocks_per_sm = 8
    warps_per_block = 4

    def __init__(self, device_id: int = 0):
        ok, what = probe()
        if not ok:
            raise DeviceError(f"device cuda is not available: {what}")
        import cupy

        self.cupy = cupy
        self.xp = cupy
        self.device = cupy.cuda.Device(device_id)
        self.device.use()
        self.sm_count = int(self.device.attributes["MultiProcessorCount"])
        self._name = what
        self._modules: dict = {}

    @property
    def rows_in_flight(self) -> int:
        """Rows a full per-row launch trains at once (a warp each)."""
        return self.sm_count * self.blocks_per_sm * self.warps_per_block

    def asnumpy(self, a) -> np.ndarray:
        return self.cupy.asnumpy(a)

    def synchronize(self) -> None:
        self.device.synchronize()

    def free_memory(self) -> int | None:
        return int(self.device.mem_info[0])

    def describe(self) -> str:
        return self._name

    def module(self, dtype, kp: int) -> dict:
        key = (np.dtype(dtype).name, int(kp))
        if key not in self._modules:
            names = kernel_names(dtype, kp)
            try:
                mod = self.cupy.RawModule(code=load_source(), options=("-std=c++17",),
                                          name_expressions=names)
                self._modules[key] = {n.split("<")[0]: mod.get_function(n) for n in names}
            except Exception as exc:
                raise DeviceError(f"could not compile the CUDA kernels ({_one_line(exc)})") from exc
        return self._modules[key]
