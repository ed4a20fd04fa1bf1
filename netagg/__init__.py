"""netagg: in-network gradient aggregation.

``netagg.constants`` and ``netagg.wire`` are the one definition of the protocol that the software switch
(``netagg.softswitch``), the controller (``netagg.controller``) and the host agent (``netagg.host_agent``)
share; the P4 program is generated from / checked against them.
"""

__version__ = "0.1.0"
