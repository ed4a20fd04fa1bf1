"""An emulated network demo of netagg: hosts in Mininet run one all-reduce through the aggregating switch.

Run it as root from the repository root with ``python -m examples.mininet --help``; docs/demo.md explains it.
"""
