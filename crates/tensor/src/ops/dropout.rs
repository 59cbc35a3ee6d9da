//! dropout (placeholder module, being written)
