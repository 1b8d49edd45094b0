"""Chaos scenarios (#25): processes killed, brokers restarted, connections cut and
frozen, poison in the stream, shutdown under load, and a soak, on every broker.

A short profile runs with the normal test command; the long one with
``--chaos-long`` (or ``EVENTBUS_CHAOS=long``) and feeds ``docs/reliability.md``
(``scripts/gen_reliability.py``). See ``docs/reliability.md`` for what each
scenario asserts.
"""
