"""An embedded, MongoDB-wire-compatible server with change streams.

It is the default database of ``runtime serve`` and the database every integration test uses.
Runtime code never talks to it except through PyMongo, exactly as it would to a real replica set.
"""
