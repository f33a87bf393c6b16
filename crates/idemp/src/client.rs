//! reqwest client middleware (being written)
