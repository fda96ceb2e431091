"""The report wing: what only the book uses, apart from the engine.

``study`` (what the notebooks call: runs of a chapter, the scorecard's verdicts), ``charts``
(the book's Altair figures), ``paper`` (the paper's reported numbers), ``official`` (how our
setting differs from the official code, and the strategy table) and ``book`` (papermill and
Jupyter Book). The engine (config, data, models, strategies, attacks, train, store, pareto) can
be read without any of it.
"""
