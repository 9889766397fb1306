"""AWD-GRU on Penn Treebank: the five dropouts, embedding and hidden sizes, lr,
AR/TAR and NT-ASGD's patience, around the reference configuration (the first trial)."""

from spaces._common import awd_space

SPACE = awd_space("gru_ptb", "awd_gru", "ptb")
