//! cmp (placeholder module, being written)
