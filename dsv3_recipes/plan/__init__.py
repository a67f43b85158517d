"""The planner floor: FLOPs, memory, validation and the preflight report. Launch side: no torch."""
