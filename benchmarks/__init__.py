"""Benchmarks of the training step and of a search's orchestration overhead.

Run from the repository root as modules: ``python -m benchmarks.train_step``,
``python -m benchmarks.search_overhead``. They time the package's own code (`awd.trainer.Trainer`,
`search.driver.run_search`), never copies of it.
"""
