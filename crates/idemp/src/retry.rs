//! TODO: retry (being written)
