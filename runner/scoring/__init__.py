"""Scoring below the stages: benchmark items, log-likelihood scoring as the harness computes it,
intervals and paired tests, calibration, safety flags."""
