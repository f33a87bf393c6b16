//! In-memory store (being written).
use super::*;
use crate::clock::Millis;

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// A new empty store.
    pub fn new() -> Self {
        Self {}
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, _claim: &Claim) -> StoreResult<ClaimOutcome> {
        unimplemented!()
    }
    async fn complete(
        &self,
        _id: &RecordKey,
        _token: Token,
        _outcome: Outcome,
        _ttl: Duration,
    ) -> StoreResult<()> {
        unimplemented!()
    }
    async fn fail(
        &self,
        _id: &RecordKey,
        _token: Token,
        _outcome: Outcome,
        _ttl: Duration,
    ) -> StoreResult<()> {
        unimplemented!()
    }
    async fn release(&self, _id: &RecordKey, _token: Token) -> StoreResult<()> {
        unimplemented!()
    }
    async fn renew(&self, _id: &RecordKey, _token: Token, _lease: Duration) -> StoreResult<Millis> {
        unimplemented!()
    }
    async fn get(&self, _id: &RecordKey) -> StoreResult<Option<Record>> {
        unimplemented!()
    }
    async fn list(&self, _query: &ListQuery) -> StoreResult<Page> {
        unimplemented!()
    }
    async fn purge(&self, _id: &RecordKey) -> StoreResult<bool> {
        unimplemented!()
    }
    async fn sweep(&self) -> StoreResult<u64> {
        unimplemented!()
    }
    async fn stats(&self) -> StoreResult<Stats> {
        Ok(Stats::default())
    }
}
