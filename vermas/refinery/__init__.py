"""The refinery: a deterministic merge queue. This package holds its pure core (types, queue
rules, the batch planner, the pipeline decisions); effects live elsewhere."""
