"""Flower SecAgg+ baseline app."""
