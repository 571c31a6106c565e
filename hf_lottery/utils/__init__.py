"""Shared helpers with no knowledge of tickets or training: atomic files, parameters by name."""
