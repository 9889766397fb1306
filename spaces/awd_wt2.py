"""AWD-LSTM on WikiText-2: the five dropouts, embedding and hidden sizes, lr,
AR/TAR and NT-ASGD's patience, around the reference configuration (the first trial)."""

from spaces._common import awd_space

SPACE = awd_space("awd_wt2", "awd_lstm", "wikitext-2")
