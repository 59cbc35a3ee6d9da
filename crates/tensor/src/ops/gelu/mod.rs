//! gelu (placeholder module, being written)
