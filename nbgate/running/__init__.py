"""Running one case: the notebook, its parameters, kernels, recording, thresholds, files."""
