"""Uncertainty of ensembles: the heterogeneous-ensemble metric U, baselines, force delta,
calibration summaries (Spearman rho, accuracy-coverage)."""
