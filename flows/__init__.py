"""Prefect flows: composition only. The stages, their caching and their files belong to pruning/ and DVC."""
