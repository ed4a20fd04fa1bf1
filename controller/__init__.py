"""netagg.controller: programs the switch over P4Runtime and admits jobs for host agents (docs/controller.md).

Layers, bottom up: ``topology`` (config file), ``pool`` (slots and epochs), ``jobs`` (admission, leases),
``entries`` (P4Runtime entities by name), ``switch`` (lifecycle over finsy), ``stats``, ``api``/``client`` (the
HTTP job API), ``service``/``cli`` (wiring and the command line).
"""
