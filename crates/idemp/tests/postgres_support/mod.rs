//! Shared helpers of the Postgres tests: a store in a schema of its own, dropped at the end.
#![allow(dead_code)]

use idemp::store::postgres::{PostgresOptions, PostgresStore};

/// The test server (`IDEMP_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
pub fn url() -> String {
    std::env::var("IDEMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema name unique to this run: `idemp_t_<pid>_<random>`.
pub fn unique_schema() -> String {
    format!(
        "idemp_t_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Drops its schema (and everything in it) when dropped, even after a panic.
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let url = url();
        // Runs on a thread of its own: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(conn);
                    // End this schema's own leftover sessions (their application_name
                    // names the schema: never anyone else's), then drop it.
                    let _ = client
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE right(application_name, length($1::text)) = $1::text AND pid <> pg_backend_pid()",
                            &[&schema],
                        )
                        .await;
                    let _ = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                        ))
                        .await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

/// Options for a test store in `schema`: a small pool (the server is shared), no
/// background sweeper (tests call `sweep`).
pub fn options(schema: &str) -> PostgresOptions {
    PostgresOptions::default()
        .schema(schema)
        .pool_size(8)
        .sweep_interval(None)
        .application_name(format!("idemp_test_{schema}"))
}

/// Connects, failing with a message that says how to start the server.
pub async fn connect(opts: PostgresOptions) -> PostgresStore {
    match PostgresStore::connect_with(&url(), opts).await {
        Ok(s) => s,
        Err(e) => panic!(
            "cannot reach the test Postgres at {} ({e}); start it with scripts/services.sh \
             or set IDEMP_TEST_POSTGRES_URL",
            url()
        ),
    }
}

/// A fresh store in a fresh schema.
pub async fn fresh() -> (PostgresStore, SchemaGuard) {
    let schema = unique_schema();
    let guard = SchemaGuard(schema.clone());
    (connect(options(&schema)).await, guard)
}

/// A plain client to the test server (for side tables and inspection).
pub async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test Postgres at {} ({e}); start it with scripts/services.sh",
                url()
            )
        });
    tokio::spawn(conn);
    client
}
