"""Your handlers, one module per reactor."""
