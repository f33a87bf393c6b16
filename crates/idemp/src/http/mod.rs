//! tower server middleware (being written)
