"""Studies: each plans run folders, trains them through muonlab.train, and reports from their logs."""
