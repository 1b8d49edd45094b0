"""Tests of the Redis adapters (Pub/Sub and Streams) and the Redis idempotency store."""
