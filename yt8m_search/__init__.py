"""yt8m_search: hyperparameter search and budgeted ensembling for YouTube-8M classifiers."""

__version__ = "0.1.0"
