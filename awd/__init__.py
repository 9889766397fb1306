"""awd: AWD-LSTM, AWD-GRU and Zaremba LSTM language models, NT-ASGD and a resumable trainer.

This package knows nothing of Ray or MLflow: `search/` drives it through
`awd.trainer.Trainer`, and `python -m awd.train` is its command line.
"""

__version__ = "0.1.0"
