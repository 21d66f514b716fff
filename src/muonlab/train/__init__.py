"""Training: config, the loop, LR schedules, checkpoints and the metrics log of a run folder."""
