"""Searching the supernet: the parameter encoding, objectives, Optuna studies, fronts and the OPs-vs-latency comparison."""
