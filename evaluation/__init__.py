"""Evaluation of coded images: rate–accuracy curves and Bjøntegaard metrics."""

from icmh.evaluation.bjontegaard import DEFAULT_METHOD, METHODS, bd_metric, bd_rate, read_curve_csv

__all__ = ["DEFAULT_METHOD", "METHODS", "bd_metric", "bd_rate", "read_curve_csv"]
