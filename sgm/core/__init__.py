"""The science core: networks, EDM preconditioning and loss, samplers, the observation model
and its operators, conditioning, training, the Gaussian oracle, metrics.

Rules (kept by tests/test_layout.py): modules here work on tensors and arrays only. They import
nothing from ``sgm.io``, ``sgm.config``, ``sgm.stages`` or ``sgm.report``, and no file or store
library (xarray, zarr, netCDF4, dask, yaml, pydantic): settings arrive as plain values or
protocols, files as stores passed in (e.g. ``training.CheckpointStore``). One idea per module,
each algorithm written as its paper's equations with the reference in its docstring.
"""
