"""``torchrun`` entry point for the fault-tolerance test: ``muonlab`` CLI, but in the first attempt
(``TORCHELASTIC_RESTART_COUNT`` 0) rank 1 dies abruptly after ``MUONLAB_TEST_KILL_AFTER_STEP``
optimizer steps, as a crashed or preempted worker would. Before it dies it leaves a file named
``rank1-attempt0-stepN`` in ``MUONLAB_TEST_DEATHS``, which the test reads (not torchrun's log text)."""

import os
import sys
from pathlib import Path

from muonlab.cli import main
from muonlab.train import loop

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("RANK") == "1":
    kill_after = int(os.environ["MUONLAB_TEST_KILL_AFTER_STEP"])
    build_optimizer = loop.build_optimizer

    def build_dying_optimizer(model, config):
        optimizer = build_optimizer(model, config)
        steps = []

        def die(opt, args, kwargs):
            steps.append(1)
            if len(steps) == kill_after:
                (Path(os.environ["MUONLAB_TEST_DEATHS"]) / f"rank1-attempt0-step{kill_after}").touch()
                os._exit(17)

        optimizer.register_step_post_hook(die)
        return optimizer

    loop.build_optimizer = build_dying_optimizer

sys.exit(main(sys.argv[1:]))
