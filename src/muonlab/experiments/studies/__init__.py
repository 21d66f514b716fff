"""One module per study, each defining ``STUDY`` (``muonlab.experiments.study.Study``); found by ``registry``."""
