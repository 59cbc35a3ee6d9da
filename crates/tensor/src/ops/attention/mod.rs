//! attention (placeholder module, being written)
