"""reactgen generator: compiles reactor definitions into typed models, stubs and pipelines."""
