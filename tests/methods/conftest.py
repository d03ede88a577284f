"""The small random dataset of tests/test_user_models.py, shared with the method tests as a fixture."""

from tests.test_user_models import data  # noqa: F401 - a fixture, found by pytest here
