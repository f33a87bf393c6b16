//! The loop guard: at most N calls of a tool per scope reach the server, counted in
//! the store so that every proxy sharing it counts together.
//!
//! The store contract has no counter, but it has an atomic claim: the budget is N
//! numbered slots, `budget/<tool>/<n>` for `n` in `0..N`, and a call may go to the
//! server once it has claimed a free slot. Claims are atomic, so two processes can
//! never take the same slot, and a slot once taken stays taken for the ttl (it is
//! settled at once, so it is never "ambiguous" and never taken over). Each proxy keeps
//! a hint of the next slot that may be free, so a call costs one claim (plus the
//! settle) while the budget lasts; a proxy that starts late walks past the slots
//! others took, at most N claims once. When the hint reaches N the call is refused
//! without asking the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use idemp::store::{Claim, ClaimOutcome, Codec, DynStore, Outcome, RecordKey, StoreError};

/// The budget counters of one proxy (see the [module docs](self)).
#[derive(Debug)]
pub struct Budget {
    store: DynStore,
    ttl: Duration,
    /// (record scope, tool) → the next slot that may be free.
    hints: Mutex<HashMap<(String, String), u64>>,
}

/// The record scope of the budget slots of a call scope.
pub fn record_scope(scope: &str) -> String {
    format!("{scope}#budget")
}

/// The key of slot `n` of `tool`: the tool's name when it is short visible ASCII
/// without `/`, otherwise a digest of it.
pub fn slot_key(tool: &str, n: u64) -> String {
    let plain = !tool.is_empty()
        && tool.len() <= 128
        && tool
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'/');
    if plain {
        format!("budget/{tool}/{n}")
    } else {
        let digest = idemp::store::Fingerprint::of(tool.as_bytes()).to_hex();
        format!("budget/sha256:{}/{n}", &digest[..32])
    }
}

impl Budget {
    /// Budgets kept in `store`; a taken slot lives `ttl`.
    pub fn new(store: DynStore, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            hints: Mutex::default(),
        }
    }

    fn hint(&self, key: &(String, String)) -> u64 {
        self.hints
            .lock()
            .map(|h| h.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn set_hint(&self, key: (String, String), next: u64) {
        if let Ok(mut h) = self.hints.lock() {
            let e = h.entry(key).or_insert(0);
            *e = (*e).max(next);
        }
    }

    /// Takes one call of `tool` in `scope` out of a budget of `limit`: `Ok(true)` when
    /// the call may go to the server, `Ok(false)` when the budget is spent.
    pub async fn take(&self, scope: &str, tool: &str, limit: u64) -> Result<bool, StoreError> {
        let hint_key = (scope.to_owned(), tool.to_owned());
        let mut n = self.hint(&hint_key);
        let record_scope = record_scope(scope);
        while n < limit {
            let claim = Claim::new(RecordKey::new(record_scope.as_str(), slot_key(tool, n)))
                .lease(self.ttl)
                .ttl(self.ttl)
                .take_over_expired(false);
            match self.store.claim(&claim).await? {
                ClaimOutcome::Acquired { token, .. } => {
                    self.set_hint(hint_key, n + 1);
                    // Settled at once: a taken slot is never ambiguous. If this fails
                    // the slot stays in progress, which still counts as taken.
                    let mark = Outcome::new(Codec::Raw, Vec::new());
                    if let Err(e) = self.store.complete(&claim.id, token, mark, self.ttl).await {
                        tracing::debug!(id = %claim.id, error = %e, "budget slot left in progress");
                    }
                    return Ok(true);
                }
                ClaimOutcome::Existing(_) | ClaimOutcome::Mismatch(_) => n += 1,
            }
        }
        self.set_hint(hint_key, limit);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn slots_are_shared_between_budgets_on_one_store() {
        let store: DynStore = Arc::new(idemp::store::MemoryStore::new());
        let a = Budget::new(store.clone(), Duration::from_secs(60));
        let b = Budget::new(store.clone(), Duration::from_secs(60));
        let mut granted = 0;
        for i in 0..10 {
            let budget = if i % 2 == 0 { &a } else { &b };
            if budget.take("s", "send", 5).await.unwrap() {
                granted += 1;
            }
        }
        assert_eq!(granted, 5);
        // Another tool and another scope have their own budgets.
        assert!(a.take("s", "other", 5).await.unwrap());
        assert!(a.take("s2", "send", 5).await.unwrap());
        // A fresh proxy walks past the taken slots and is refused.
        let c = Budget::new(store, Duration::from_secs(60));
        assert!(!c.take("s", "send", 5).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takes_never_exceed_the_budget() {
        let store: DynStore = Arc::new(idemp::store::MemoryStore::new());
        let budgets: Vec<_> = (0..4)
            .map(|_| Arc::new(Budget::new(store.clone(), Duration::from_secs(60))))
            .collect();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let b = budgets[i % 4].clone();
            tasks.push(tokio::spawn(
                async move { b.take("s", "t", 20).await.unwrap() },
            ));
        }
        let mut granted = 0;
        for t in tasks {
            granted += usize::from(t.await.unwrap());
        }
        assert_eq!(granted, 20);
    }

    #[test]
    fn slot_keys_are_valid_keys() {
        assert_eq!(slot_key("send_email", 3), "budget/send_email/3");
        let odd = slot_key("envoyer un e-mail/é", 0);
        assert!(odd.starts_with("budget/sha256:"));
        assert!(idemp::key::validate(&odd).is_ok());
    }
}
