"""Per-broker contenders: each module lists what runs against eventbus on one broker.

A new adapter adds one module here with a ``contenders(...)`` function returning
:class:`runner.Contender` objects (eventbus, the raw client loop doing the same
work, FastStream's defaults where FastStream has that broker) and, optionally, a
wire codec for the stage table (see ``stages.WireCodec``).
"""
