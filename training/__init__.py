"""Training: MNIST loading, the model definitions, outlier exposure, calibration, evaluation
and SavedModel export."""
