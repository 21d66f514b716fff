"""Entry point of the resharding tests: the ``muonlab`` CLI, but every process of the run dies abruptly
(``os._exit(17)``, as under SIGKILL: no cleanup) after ``MUONLAB_TEST_STOP_AFTER_STEP`` optimizer steps,
when that variable is set."""

import os
import sys

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
                os._exit(17)

        optimizer.register_step_post_hook(die)
        return optimizer

    loop.build_optimizer = build_stopping_optimizer

sys.exit(main(sys.argv[1:]))
