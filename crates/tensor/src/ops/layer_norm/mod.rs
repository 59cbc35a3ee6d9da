//! layer_norm (placeholder module, being written)
