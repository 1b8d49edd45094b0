"""Kafka adapter for eventbus (placeholder while the adapter is written)."""
