//! The sweeper's statement loop: expired rows deleted by TID-range slices.

use super::*;

impl Core {
    pub(super) async fn sweep(&self) -> StoreResult<u64> {
        let chunk = i64::from(self.opts.sweep_batch.max(1));
        let client = self.pool.get().await.map_err(|e| pool_error("sweep", e))?;
        let err = |e| pg_error("sweep", e);
        let pages_stmt = client.prepare_cached(&self.sql.pages).await.map_err(err)?;
        let pages: i64 = client
            .query_one(&pages_stmt, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        let sweep = client.prepare_cached(&self.sql.sweep).await.map_err(err)?;
        let mut total = 0u64;
        let mut first = 0i64;
        // Pages added while sweeping hold fresh rows; the next pass gets them.
        while first <= pages {
            let now = self.now_param();
            let after = first.saturating_add(chunk);
            total += client
                .execute(&sweep, &[&now, &first, &after])
                .await
                .map_err(err)?;
            first = after;
        }
        Ok(total)
    }
}
