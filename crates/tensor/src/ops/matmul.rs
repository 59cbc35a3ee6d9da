//! matmul (placeholder module, being written)
