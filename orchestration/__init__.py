"""Driver layer: the `seal` CLI and the loops it runs (train, evaluate, generate, compare, continual),
the worker launchers and the reports. Imports `teacher`, `student` and the base layer `core`; nothing
imports it. The queue that links teacher and students is in `core`, because both sides use it.
"""
