//! The library half of the `idemp` command: the `idemp serve` proxy, for in-process
//! use (`idemp demo`, the fuzz targets) and for embedding.
//!
//! The command itself (`idemp key`, `canon`, `hash`, `records`, `demo`) lives in the
//! binary; see the README for its surface.

pub mod serve;
