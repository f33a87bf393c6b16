//! TODO: batch (being written)
