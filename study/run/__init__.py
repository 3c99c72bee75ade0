"""The run's infrastructure: the run directory and its formats (``rundir``, ``checkpoint``),
the results table (``results``), Tune's experiment storage (``storage``) and the Ray cluster
(``cluster``).

Import the module you need: ``rundir`` and ``results`` need pandas and ``storage`` pyarrow,
which a GPU machine running ``python -m study.bench epoch`` may lack; ``checkpoint`` needs
torch alone.
"""
