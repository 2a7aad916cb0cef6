"""Pipelines assembled from kic's components; ``kic compile`` writes pipeline.yaml."""
