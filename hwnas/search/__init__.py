"""Searching the supernet: parameter encoding, objectives, Optuna studies, fronts, OPs-vs-latency comparison."""
