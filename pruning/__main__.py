"""``python -m pruning``: the command line (pruning.cli). DVC runs ``python -m pruning prepare`` on every ``dvc repro``:
when DVC runs a stage whose outputs are unchanged (its row's ``unchanged`` check, importing no torch), the command
returns here, before the command line and what it imports are loaded. Typed by hand, a verb always runs its stage."""

import os
import sys
from pathlib import Path

from pruning.record import UNDER_DVC
from pruning.stages import BY_NAME

if (os.environ.get(UNDER_DVC) and len(sys.argv) == 2 and sys.argv[1] in BY_NAME
        and BY_NAME[sys.argv[1]].outputs_unchanged(Path("params.yaml"))):
    print(f"{sys.argv[1]} unchanged: its outputs are the ones it would write now")
    sys.exit(0)

from pruning.cli import main  # noqa: E402

main()
