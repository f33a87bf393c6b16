//! # idemp: make retries safe
//!
//! LLM agents retry: on 429s, timeouts, overloaded providers, lost responses. When the
//! retried call charges a card, sends an email or runs a paid model request, the retry
//! must not do it twice. idemp gives the three things that are needed together:
//!
//! 1. **The same key on every attempt** ([`key`], [`canon`]): keys derived from the
//!    request's content, byte-compatible with the Python `agentidemp-py` and
//!    `llm-message-hash-py` packages.
//! 2. **At most one execution per key** ([`guard`], [`store`]): an atomic claim in a
//!    store that every worker shares, fencing tokens, leases with heartbeat, replay of
//!    the stored result, coalesced waiting, and an explicit *ambiguous* outcome after a
//!    crash.
//! 3. **Policy that uses them**: retries that keep the key ([`retry`]), a cache for
//!    read-only tool results ([`cache`]), and tool effect tags ([`tool`]).
//!
//! Over HTTP: a tower middleware (feature `http`), a reqwest client middleware
//! (feature `client`), and the `idemp serve` sidecar proxy (the `idemp-cli` crate).
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | [`store::sqlite::SqliteStore`], the embedded default store |
//! | `redis` | `store::redis::RedisStore` (Redis and Redis Cluster) |
//! | `postgres` | `store::postgres::PostgresStore` |
//! | `http` | the tower server layer in `http` |
//! | `client` | the reqwest client middleware in `client` |
//! | `compression` | compression of large stored outcomes |
//! | `testkit` | the store conformance suite in `testkit` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod batch;
pub mod cache;
pub mod canon;
pub mod clock;
pub mod guard;
pub mod key;
pub mod retry;
pub mod store;
pub mod tool;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use guard::{Guard, GuardError};
pub use key::Key;
pub use store::{Store, StoreError};
