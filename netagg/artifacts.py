"""Where the compiled P4 program lives: the one pipeline the controller pushes and the softswitch accepts.

The files are committed next to their source (``make p4`` regenerates them); they are found relative to this
package, i.e. in a source checkout (the editable install ``make install`` makes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: The repository root (``netagg/`` sits directly below it).
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
#: Compiler output folder of the v1model (BMv2) program.
V1MODEL_BUILD: Final = REPO_ROOT / "p4" / "v1model" / "build"
#: P4Info of the netagg program (text format).
P4INFO: Final = V1MODEL_BUILD / "netagg.p4info.txtpb"
#: BMv2 JSON of the same program.
BMV2_JSON: Final = V1MODEL_BUILD / "netagg.json"
