"""Sample-quality metrics. `sgm.metrics.digits`: classifier-based metrics for 8x8 digits."""
from sgm.metrics.digits import (
    DigitClassifier,
    DigitMetrics,
    class_accuracy,
    class_coverage,
    evaluate,
    fid_vs_heldout,
    frechet_distance,
    gaussian_frechet_distance,
    load_digit_classifier,
)

__all__ = [
    "DigitClassifier",
    "DigitMetrics",
    "class_accuracy",
    "class_coverage",
    "evaluate",
    "fid_vs_heldout",
    "frechet_distance",
    "gaussian_frechet_distance",
    "load_digit_classifier",
]
