"""Gradient compression schemes as ``compress(tensor) -> (payload, ctx)`` / ``decompress(payload, ctx)`` pairs.

``quantizers``: bucketed, normalized, unbiased stochastic quantizers (NUQSGD, QSGDinf, TernGrad, and the adaptive
ALQ and AMQ of Faghri et al., NeurIPS 2020) with bit-packed codes; ``adaptive``: fitting ALQ's and AMQ's levels to
the gradients' distribution; ``hooks``: a DDP communication hook that exchanges the codes by all-gather;
``cser``: CSER and the methods it generalizes, whose shared random blocks are summed by all-reduce (the switch).
"""
