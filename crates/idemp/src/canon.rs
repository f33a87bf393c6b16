//! TODO: canon (being written)
