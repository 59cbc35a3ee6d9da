//! softmax (placeholder module, being written)
