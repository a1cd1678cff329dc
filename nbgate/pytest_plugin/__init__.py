"""The pytest face: the plugin, its hooks, verdicts, interrupts, sharding and the options."""
