"""Training: the config, the loop and LR schedules. The run folder it writes is :mod:`muonlab.rundir`."""
