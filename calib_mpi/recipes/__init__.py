"""Measurement recipes: how each measurement plugs its processor into gather and join."""
