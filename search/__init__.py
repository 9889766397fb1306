"""Ray Tune orchestration of Optuna searches over `awd` models, tracked in MLflow."""
