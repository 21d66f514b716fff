"""Entry point of the resharding tests: the ``muonlab`` CLI, but every process of the run dies abruptly
(``os._exit(17)``, as under SIGKILL: no cleanup) after ``MUONLAB_TEST_STOP_AFTER_STEP`` optimizer steps,
when that variable is set. Each leaves a file ``stopped-rankR-stepN`` in ``MUONLAB_TEST_DEATHS`` when that
is set, which a test reads (not the launcher's log text)."""

import os
import sys
from pathlib import Path

from muonlab.cli import main
from muonlab.train import loop

if os.environ.get("MUONLAB_TEST_STOP_AFTER_STEP"):
    stop_after = int(os.environ["MUONLAB_TEST_STOP_AFTER_STEP"])
    build_optimizer = loop.build_optimizer

    def build_stopping_optimizer(model, config):
        optimizer = build_optimizer(model, config)
        steps = []

        def die(opt, args, kwargs):
            steps.append(1)
            if len(steps) == stop_after:
                if os.environ.get("MUONLAB_TEST_DEATHS"):
                    rank = os.environ.get("RANK", "0")
                    (Path(os.environ["MUONLAB_TEST_DEATHS"]) / f"stopped-rank{rank}-step{stop_after}").touch()
                os._exit(17)

        optimizer.register_step_post_hook(die)
        return optimizer

    loop.build_optimizer = build_stopping_optimizer

sys.exit(main(sys.argv[1:]))
