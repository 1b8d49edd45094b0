"""Runnable example services built on eventbus."""
