"""``python -m study.bench {overhead,search,epoch,data}``: where a study's time goes.

Each subcommand prints a table and writes it, with how it was measured, as JSON
(``--out``, default ``runs/bench/<subcommand>-<time>.json``). See ``__main__.py``.
"""
