//! reduce_max (placeholder module, being written)
