"""CUDA backend: training and scoring on a GPU with CuPy.

Imported only for ``--device cuda`` or ``auto`` (fmcli.train, fmcli.predict);
nothing here is needed to install or run fmcli on the CPU.  The kernels
(fm_kernels.cu, fm_device.cu) ship as source and are compiled at run time by
NVRTC through CuPy, one module per float type and factor width.

- device.py   finding a device (``--device``), the CuPy backend
- state.py    GpuState (the fmcli.backend.Backend on the device) and GpuScorer
- plan.py     launch geometry, packed rows, the exact mode's slot plan and sort,
              the device memory a run takes (no device needed)
- layout.py   the arrays and names shared with the kernels
- emulate.py  the kernels on the CPU, for tests without a device
"""
