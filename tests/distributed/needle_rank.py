"""`needle ARGS` on one rank, after writing this process's id to PID_DIR/rank<r>.pid, so a
test can signal one rank of the job:

    mpirun -n 2 python needle_rank.py PID_DIR train --distributed ...
"""

import os
import sys

from needle.apps.cli import main

if __name__ == "__main__":
    rank = next(
        (
            os.environ[name]
            for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
            if name in os.environ
        ),
        "0",
    )
    with open(os.path.join(sys.argv[1], f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    sys.exit(main(sys.argv[2:]))
