"""The run folder and its guarantees: the manifest of what edgetl wrote, staged writes and the
commit, the lock, and the shape checks of a run's JSON files."""
