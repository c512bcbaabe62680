"""Operator commands over a whole store: the consistency check and migrate-to."""
