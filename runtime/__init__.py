"""reactgen runtime: executes reactive tasks planned from MongoDB change streams.

The embedded MongoDB-compatible server used for local development and tests lives in
:mod:`runtime.embedded`.
"""
