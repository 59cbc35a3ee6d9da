//! cross_entropy (placeholder module, being written)
