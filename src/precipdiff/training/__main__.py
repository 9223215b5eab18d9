"""``python -m precipdiff.training --config run.yaml [--set k=v ...] [--resume]``.

Also the entry point for DDP: ``torchrun --nproc_per_node=N -m precipdiff.training ...``.
User errors (:class:`~precipdiff.errors.PrecipdiffError`) print one line and exit with 2; Ctrl-C
exits with 130 and SIGTERM with 143, both after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from precipdiff.errors import PrecipdiffError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m precipdiff.training",
                                     description="Train a precipdiff stage.")
    parser.add_argument("--config", default=None, help="YAML run config")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    from precipdiff.training.config import load_config
    from precipdiff.training.loop import train

    try:
        run_dir = train(load_config(args.config, args.overrides), resume=args.resume,
                        progress=not args.no_progress and sys.stderr.isatty())
    except PrecipdiffError as exc:
        logging.getLogger("precipdiff").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("precipdiff").error("interrupted")
        return 130
    logging.getLogger("precipdiff").info("run finished: %s", run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
