"""Latency and cost predictors: OPs counting, layer features, per-target XGBoost models."""
