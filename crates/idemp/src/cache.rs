//! TODO: cache (being written)
