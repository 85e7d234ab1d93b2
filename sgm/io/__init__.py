"""Files: sources (NetCDF, Zarr, package data), atomic stores and files, checkpoints, the model
file, the loss log, and ``layout`` — the one place that knows store paths, ``sgm_*`` attribute
keys, grids and splits.

Rules (kept by tests/test_layout.py): io may use ``sgm.config`` (to read what a spec names) and
the core's plain types, never ``sgm.stages``, ``sgm.report`` or ``sgm.cli``. Bad input raises
``SourceError`` with one sentence naming the file, the variable and the problem.
"""
