"""Target descriptions and profiling."""
