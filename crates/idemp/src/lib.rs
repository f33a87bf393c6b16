//! # idemp: make retries safe
//!
//! LLM agents retry: on 429s, timeouts, overloaded providers, lost responses, a model
//! that calls the same tool twice. When the retried call charges a card, sends an
//! email or runs a paid model request, the retry must not do it twice. This crate is
//! built in layers; each one uses only the ones above it in this list.
//!
//! ## 1. Keys: the same key on every attempt ([`key`], [`canon`])
//!
//! A retry is recognisable only if it carries the key of the first attempt, so keys are
//! derived from what the call *is*, never drawn fresh per attempt. The compatible
//! functions give the same bytes as the Python `agentidemp-py` package; the builder is
//! injective for new code; `canon` gives the canonical JSON of a request (byte-identical
//! to `llm-message-hash-py`, or RFC 8785).
//!
//! ```
//! use idemp::key::{self, Key};
//! use serde_json::json;
//!
//! assert_eq!(key::sha256_hex("abc"), "ik_ba7816bf8f01cfea414140de5dae2223");
//! // Argument order never matters:
//! let a = key::for_args("run-1", "charge", &json!({"amount": 10, "to": "acct_1"}));
//! let b = key::for_args("run-1", "charge", &json!({"to": "acct_1", "amount": 10}));
//! assert_eq!(a, b);
//! let k = Key::builder("refund").part_str("cus_42").part_u64(2500).build();
//! assert_eq!(k.as_str().len(), 35);
//! let h = idemp::canon::hash_request(br#"{"b":1,"a":[1.0,2]}"#, None).unwrap();
//! assert_eq!(h.len(), 64);
//! ```
//!
//! ## 2. The guard: at most one execution per key ([`guard`], [`store`])
//!
//! A [`Guard`] claims the key atomically in a [`Store`] shared by every worker, runs the
//! work while a heartbeat renews its lease, stores the result, and replays it to every
//! later attempt. Fencing tokens stop a stale owner from overwriting a newer one; a
//! crash mid-run leaves an *ambiguous* record that is retaken, verified or surfaced, as
//! configured.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use idemp::Guard;
//!
//! let store = idemp::store::open("memory:").await?; // or sqlite://idemp.db, redis://…, postgres://…
//! let guard = Guard::builder(store).scope("charge").build();
//! let charges = AtomicU32::new(0);
//! for _attempt in 0..3 {
//!     let receipt: String = guard
//!         .run("order-17", || async {
//!             charges.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, std::io::Error>("rcpt_1".to_string())
//!         })
//!         .await?;
//!     assert_eq!(receipt, "rcpt_1");
//! }
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! Stores: [`store::MemoryStore`], [`store::sqlite::SqliteStore`] (the embedded
//! default), `store::redis::RedisStore` and `store::postgres::PostgresStore`, all held
//! to one contract by the public conformance kit (`testkit`).
//!
//! ## 3. HTTP
//!
//! * `http::IdempotencyLayer` (feature `http`): a tower layer with the IETF
//!   Idempotency-Key semantics (422 on a different payload, 409 while the first runs,
//!   replays marked `Idempotent-Replayed: true`, RFC 9457 errors).
//! * `client::IdempotentClient` (feature `client`): the agent side: one key per
//!   logical call, derived from its content and sent on every retry.
//! * `idemp serve` (the `idemp-cli` crate): the layer as a sidecar proxy in front of
//!   any API.
//!
//! ## 4. Agent helpers ([`retry`], [`cache`], [`tool`], [`batch`])
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idemp::tool::ToolError> {
//! use idemp::store::MemoryStore;
//! use idemp::tool::{Effect, Tool, ToolRunner};
//! use serde_json::json;
//!
//! let runner = ToolRunner::builder(MemoryStore::new())
//!     .session("conversation-7")
//!     .tool(Tool::new("lookup", Effect::Read, |args| async move { Ok(json!({"id": args["id"]})) }))
//!     .tool(Tool::new("send_email", Effect::Write, |_| async { Ok(json!({"sent": true})) }))
//!     .build();
//! runner.call("lookup", json!({"id": 1})).await?;     // cached
//! runner.call("send_email", json!({"to": "a"})).await?; // guarded: a repeat replays
//! # Ok(()) }
//! ```
//!
//! [`retry::Retrier`] retries with full jitter and `Retry-After`, with provider presets
//! (Anthropic 429/529…, OpenAI, Bedrock, Gemini), and gives every attempt the same key;
//! [`batch::custom_ids`] gives a batch stable Anthropic `custom_id`s.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | [`store::sqlite::SqliteStore`], the embedded default store |
//! | `redis` | `store::redis::RedisStore` (Redis and Redis Cluster), a shared level for [`cache::ToolCache`] |
//! | `postgres` | `store::postgres::PostgresStore` |
//! | `http` | the tower server layer in `http` |
//! | `client` | the reqwest client in `client` |
//! | `compression` | LZ4 compression of large stored outcomes |
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
