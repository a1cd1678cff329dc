"""The files written at session end: JUnit, summary, metrics, terminal lines, shard merges."""
