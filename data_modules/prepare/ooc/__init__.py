"""Out-of-core preparation on DuckDB (engine.kind: duckdb): the same stages as prepare/pipeline.py, the interaction
table kept in a DuckDB database file under a memory budget (operators spill to disk), bit for bit the same output."""
