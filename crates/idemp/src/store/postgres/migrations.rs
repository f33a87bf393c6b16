//! Creating and upgrading the schema.

use super::*;

/// Creates or upgrades the schema, serialised across processes by an advisory lock.
pub(super) async fn migrate(pool: &Pool, schema: &str, quoted: &str) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(|e| pool_error("connect", e))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("migrate", e))?;
    match migrate_in(&tx, schema, quoted).await {
        Ok(()) => tx.commit().await.map_err(|e| pg_error("migrate", e)),
        Err(e) => {
            // Release the lock and the snapshot now, not when the connection closes.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

pub(super) async fn migrate_in(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    quoted: &str,
) -> StoreResult<()> {
    let err = |e| pg_error("migrate", e);
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&format!("idemp.migrate.{schema}")],
    )
    .await
    .map_err(err)?;
    let exists = |table: &'static str| {
        let name = format!("{quoted}.{table}");
        async move {
            tx.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&name])
                .await
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(err)
        }
    };
    if !exists("schema_version").await? {
        if exists("records").await? {
            return Err(StoreError::Incompatible(format!(
                "schema `{schema}` has a `records` table but no idemp schema_version: not an idemp store"
            )));
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE {quoted}.schema_version (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 version integer NOT NULL,
                 migrated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {quoted}.schema_version (version) VALUES (0);"
        ))
        .await
        .map_err(err)?;
    }
    let version: i32 = tx
        .query_one(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "schema `{schema}` is at version {version}, newer than this idemp understands ({SCHEMA_VERSION}): upgrade idemp"
        )));
    }
    if version < SCHEMA_VERSION {
        let start = usize::try_from(version).unwrap_or(0);
        for migration in &sql::MIGRATIONS[start..] {
            tx.batch_execute(&migration.replace("__SCHEMA__", quoted))
                .await
                .map_err(err)?;
        }
        tx.execute(
            &format!(
                "UPDATE {quoted}.schema_version SET version = $1::integer, migrated_at = now()"
            ),
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(err)?;
    }
    Ok(())
}
