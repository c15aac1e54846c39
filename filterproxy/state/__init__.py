"""Live state changed through the control API: overrides, pauses, devices, users, reviews, statistics, audit.

:mod:`~filterproxy.state.model` holds the records, :mod:`~filterproxy.state.store` the database
(SQLite by default, PostgreSQL for several gateways).
"""
