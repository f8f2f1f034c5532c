"""Concept erasure: the objective, trajectories, the jitted train step, prompt pools, the erase loop and
the stage sequence of a run."""
