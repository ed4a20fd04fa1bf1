"""netagg against gloo's ring all-reduce on one emulated, shaped network: ``python -m bench.network --help``.

Modules: ``topology`` (the namespaces, links, shaping, the Linux bridge and the netagg switch), ``cpu`` (CPU and
load sampling), ``runners`` (one measured point of each system), ``gloo_rank`` (one rank of the gloo all-reduce),
``model`` (wire efficiency and the bounds), ``report`` (markdown, JSON and plots) and ``__main__`` (the matrix).
"""
