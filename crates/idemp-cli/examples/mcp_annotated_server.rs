//! An MCP server in Rust (the `rmcp` SDK) whose tools say what they do, for
//! `idemp mcp` to read: the same three tools as `examples/mcp/annotated_server.py`.
//!
//! ```text
//! cargo build -p idemp-cli --example mcp_annotated_server
//! idemp mcp --scope run-42 -- target/debug/examples/mcp_annotated_server
//! ```
//!
//! | tool | annotations | `idemp mcp` policy |
//! |---|---|---|
//! | `get_balance` | `readOnlyHint` | pass (cache with `--cache-reads`) |
//! | `set_email` | `idempotentHint`, `destructiveHint: false` | pass |
//! | `charge` | none: MCP's defaults (destructive, not idempotent) | guard: at most once per key |
//!
//! Every charge appends one line to `$CHARGES_LOG` (default `charges.log`): the
//! side effect a retried call must not repeat.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Customer {
    /// The customer's id.
    customer: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SetEmail {
    customer: String,
    email: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Charge {
    customer: String,
    /// Amount in cents (positive).
    cents: u64,
}

#[derive(Clone)]
struct Payments {
    balances: Arc<Mutex<HashMap<String, u64>>>,
    emails: Arc<Mutex<HashMap<String, String>>>,
    tool_router: ToolRouter<Payments>,
}

#[tool_router]
impl Payments {
    fn new() -> Self {
        Self {
            balances: Arc::default(),
            emails: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    /// The customer's balance in cents (reads only).
    #[tool(annotations(read_only_hint = true))]
    fn get_balance(&self, Parameters(Customer { customer }): Parameters<Customer>) -> String {
        let balances = self.balances.lock().unwrap_or_else(|e| e.into_inner());
        balances.get(&customer).copied().unwrap_or(0).to_string()
    }

    /// Sets the customer's email: doing it twice is the same as once.
    #[tool(annotations(idempotent_hint = true, destructive_hint = false))]
    fn set_email(&self, Parameters(SetEmail { customer, email }): Parameters<SetEmail>) -> String {
        let mut emails = self.emails.lock().unwrap_or_else(|e| e.into_inner());
        emails.insert(customer, email.clone());
        email
    }

    /// Charges the customer's card. Not idempotent: every call is a new charge.
    #[tool]
    fn charge(
        &self,
        Parameters(Charge { customer, cents }): Parameters<Charge>,
    ) -> Result<String, String> {
        if cents == 0 {
            return Err("cents must be positive".into());
        }
        let path = std::env::var("CHARGES_LOG").unwrap_or_else(|_| "charges.log".into());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        writeln!(log, "{{\"customer\":{customer:?},\"cents\":{cents}}}")
            .and_then(|()| log.sync_all())
            .map_err(|e| format!("cannot write {path}: {e}"))?;
        let mut balances = self.balances.lock().unwrap_or_else(|e| e.into_inner());
        *balances.entry(customer.clone()).or_default() += cents;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(format!("rcpt_{customer}_{cents}_{nanos}"))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Payments {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("Payments: charge is guarded by idemp mcp")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Payments::new().serve(rmcp::transport::stdio()).await?;
    server.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotations give the policies of the table above.
    #[test]
    fn annotations_say_what_the_tools_do() {
        let read = Payments::get_balance_tool_attr().annotations.unwrap();
        assert_eq!(read.read_only_hint, Some(true));
        let set = Payments::set_email_tool_attr().annotations.unwrap();
        assert_eq!(
            (set.idempotent_hint, set.destructive_hint),
            (Some(true), Some(false))
        );
        // No annotations: MCP's defaults, destructive and not idempotent.
        let charge = Payments::charge_tool_attr();
        assert!(
            charge
                .annotations
                .is_none_or(|a| a.idempotent_hint != Some(true) && a.read_only_hint != Some(true))
        );
    }
}
