//! A tool layer for an agent: a read tool served from the cache, a payment tool run
//! at most once per distinct call, and a destructive tool that demands a key.
//!
//! ```text
//! cargo run -p idemp --example tool_layer
//! ```
//!
//! The "model" below does what models do: it calls `lookup_customer` three times and
//! `charge` twice with the same arguments (once with the keys in another order).
//! The tools count their real executions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use idemp::store::MemoryStore;
use idemp::tool::{Effect, Tool, ToolError, ToolFailure, ToolRunner};
use serde_json::{Value, json};

/// What the example observed: real executions per tool.
#[derive(Debug, Default)]
pub struct Counts {
    pub lookups: u32,
    pub charges: u32,
    pub deletions: u32,
}

pub async fn run() -> Result<Counts, ToolError> {
    let lookups = Arc::new(AtomicU32::new(0));
    let charges = Arc::new(AtomicU32::new(0));
    let deletions = Arc::new(AtomicU32::new(0));

    let (l, c, d) = (lookups.clone(), charges.clone(), deletions.clone());
    let runner = ToolRunner::builder(MemoryStore::new())
        .session("conversation-7")
        .tool(Tool::new("lookup_customer", Effect::Read, move |args| {
            let l = l.clone();
            async move {
                l.fetch_add(1, Ordering::SeqCst);
                Ok::<Value, ToolFailure>(json!({"id": args["id"], "name": "Ada", "plan": "pro"}))
            }
        }))
        .tool(Tool::new("charge", Effect::Write, move |args| {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(json!({"receipt": format!("rcpt_{n}"), "amount": args["amount"]}))
            }
        }))
        .tool(Tool::new(
            "delete_account",
            Effect::Destructive,
            move |_| {
                let d = d.clone();
                async move {
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(json!({"deleted": true}))
                }
            },
        ))
        .build();

    for _ in 0..3 {
        let customer = runner
            .call("lookup_customer", json!({"id": "c_42"}))
            .await?;
        println!("lookup_customer -> {customer}");
    }
    let first = runner
        .call("charge", json!({"customer": "c_42", "amount": 1999}))
        .await?;
    let retry = runner
        .call("charge", json!({"amount": 1999, "customer": "c_42"}))
        .await?;
    println!("charge -> {first}; the model's duplicate call -> {retry}");

    match runner.call("delete_account", json!({"id": "c_42"})).await {
        Err(ToolError::KeyRequired { tool }) => println!("{tool}: refused without a key"),
        other => println!("unexpected: {other:?}"),
    }
    runner
        .call_with_key("delete_account", json!({"id": "c_42"}), "gdpr-request-881")
        .await?;
    runner
        .call_with_key("delete_account", json!({"id": "c_42"}), "gdpr-request-881")
        .await?;

    let counts = Counts {
        lookups: lookups.load(Ordering::SeqCst),
        charges: charges.load(Ordering::SeqCst),
        deletions: deletions.load(Ordering::SeqCst),
    };
    println!(
        "real executions: lookup_customer {} (3 calls), charge {} (2 calls), delete_account {} (2 keyed calls)",
        counts.lookups, counts.charges, counts.deletions
    );
    Ok(counts)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ToolError> {
    run().await.map(|_| ())
}
