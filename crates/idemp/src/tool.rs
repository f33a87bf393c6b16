//! TODO: tool (being written)
