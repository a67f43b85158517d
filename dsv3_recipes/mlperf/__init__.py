"""MLPerf DSV3 rules (checked by the planner) and mlperf-logging's compliance check."""
