"""Driver layer: the `seal` CLI and the loops it runs. Imports teacher, student and core."""
