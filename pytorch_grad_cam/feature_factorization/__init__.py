"""Deep Feature Factorization (Collins et al., 2018): non-negative matrix factorization
of a layer's activations into concepts and where each concept is in the image."""

from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
    DeepFeatureFactorization,
    dff,
    non_negative_matrix_factorization,
    run_dff_on_image,
)

__all__ = ["DeepFeatureFactorization", "dff", "non_negative_matrix_factorization", "run_dff_on_image"]
