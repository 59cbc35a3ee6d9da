//! unary (placeholder module, being written)
