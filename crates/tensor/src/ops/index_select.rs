//! index_select (placeholder module, being written)
