"""Readers of raw detector files, one module per facility."""
