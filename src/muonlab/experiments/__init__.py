"""Studies: each plans run folders, trains them through muonlab.train, and reports from their logs.

``muonlab experiment NAME`` runs one. A study is one module in ``studies/`` (``study.Study``: presets,
``plan``, ``analyse``); ``registry`` finds it, ``command`` runs it: ``runner`` trains the runs (resumable,
side by side), ``progress`` + ``display`` show them live, ``calibration`` + ``estimate`` price them for
``--dry-run``, ``protocol`` holds the statistics every report states, ``outputs`` writes the report.
"""
