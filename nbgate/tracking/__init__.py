"""Tracking: an MLflow run per case, through one helper process per user and store."""
