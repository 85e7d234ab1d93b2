"""One module per ``sgm`` command (``sgm coarsen-file`` runs ``sgm.stages.coarsen_file``).

A stage translates between files (``sgm.io``) and the science core (``sgm.core``): it opens
stores, rebuilds the objects the core needs (the observation model from its stored description,
the denoiser from ``model.pt``), calls the core, and writes its outputs atomically. Rules (kept
by tests/test_layout.py): a stage imports no other stage; what two stages share lives in core,
io or report.
"""
