"""Interop with other producers and consumers on the same real brokers."""
