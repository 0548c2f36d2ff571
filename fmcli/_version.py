"""The release version and the name fmcli is distributed under.

This is the one place the version is written: pyproject.toml reads it from
here when a wheel or sdist is built (``[tool.setuptools.dynamic]``), and
``fm --version``, model file headers and run logs import it.  Kept free of
imports so that the build can read it without importing the package.

The import package is ``fmcli`` and the command is ``fm``, but the name on
PyPI is DISTRIBUTION: ``fmcli`` there is an unrelated project.  Messages that
tell users what to install use this name.
"""

__version__ = "0.1.0"

DISTRIBUTION = "fm-ctr"
