"""The run folder: everything a training run writes and analysis reads, in one place.

::

    <run_dir>/
        config.json          # the resolved config, model size, dataset, command   (config_file)
        metrics.jsonl        # one JSON object per logged step                       (metrics)
        tensorboard/         # optional, the same scalars for TensorBoard            (metrics)
        checkpoints/         # step_0000N/ directories and a ``latest`` pointer      (checkpoint)

Training (:mod:`muonlab.train`) writes a run folder and analysis (:mod:`muonlab.analysis`) reads
it; both go through this package, which imports neither. The checkpoint API
(``save_checkpoint``, ``load_checkpoint``, ``latest_checkpoint``, ...) lives in
:mod:`muonlab.rundir.checkpoint`, imported on its own because it needs torch; the names below
do not, so reading runs stays light.
"""

from .config_file import CONFIG_FILE, holds_run, read_config, write_config
from .metrics import METRICS_FILE, MetricsLogger, MetricsTail, read_metrics

__all__ = ["CONFIG_FILE", "METRICS_FILE", "MetricsLogger", "MetricsTail", "holds_run", "read_config", "read_metrics",
           "write_config"]
