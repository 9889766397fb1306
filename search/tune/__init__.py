"""Ray Tune's side of a search: the trainable, the Optuna searcher, the ASHA scheduler, the
callbacks that log and print each trial, and the Tune session itself. The only package of
`search` that imports Ray."""
