"""Learning-rate and hyper-parameter search on Optuna (grid, random, TPE)."""

from gdlab.tune.search import SAMPLERS, SearchResult, learning_rate_grid, make_sampler, search_learning_rate

__all__ = ["SAMPLERS", "SearchResult", "learning_rate_grid", "make_sampler", "search_learning_rate"]
