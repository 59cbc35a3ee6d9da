//! kiln-model: layers, BERT, GPT-2, checkpoints, training.
