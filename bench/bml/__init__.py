"""BML (gradient synchronization over BCube with k cards per host) against a ring and netagg: ``python -m bench.bml``.

Modules: ``topology`` (BCube(n, k) in namespaces: hosts with k cards, one bridge per group, shaped links),
``rank`` (one host's process: BML over TCP, one socket per peer and card), ``runner`` (one measured point),
``report`` (markdown, JSON and the plot) and ``__main__`` (the reproduction).
"""
