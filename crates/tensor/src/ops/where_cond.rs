//! where_cond (placeholder module, being written)
