"""Acceptance: the metrics schema (the only place metric names live), the gates (pure) and the terminal reports."""
