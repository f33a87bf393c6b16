//! The cap on request body bytes buffered at once, all requests together.
//!
//! A guarded request's body is buffered whole (it is fingerprinted before the
//! handler runs), so without a shared cap a hundred clients that each send 8 MiB,
//! slowly, hold 800 MiB. Each request takes its bytes from one budget as they arrive
//! (counted in KiB, rounded up) and gives them back when its handler has the body; a
//! request that would go over is refused at once (503 with `Retry-After`), never
//! queued: a queue of half-sent bodies is what the cap is against.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

/// The shared budget.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    sem: Arc<Semaphore>,
    units: usize,
}

/// The bytes one request holds; given back on drop.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Budget,
    permit: Option<OwnedSemaphorePermit>,
    units: usize,
}

/// The budget is spent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exhausted;

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(units)),
            units,
        }
    }

    /// An empty holding, grown with [`Held::grow_to`].
    pub(crate) fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            permit: None,
            units: 0,
        }
    }
}

impl Held {
    /// Holds at least `bytes` in total, or fails (keeping what it held).
    pub(crate) fn grow_to(&mut self, bytes: usize) -> Result<(), Exhausted> {
        let want = bytes.div_ceil(UNIT);
        if want <= self.units {
            return Ok(());
        }
        if want > self.budget.units {
            return Err(Exhausted);
        }
        let more = u32::try_from(want - self.units).map_err(|_| Exhausted)?;
        let permit = self
            .budget
            .sem
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| Exhausted)?;
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        self.units = want;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_share_one_budget_and_give_it_back() {
        let b = Budget::new(10 * 1024);
        let mut a = b.hold();
        a.grow_to(6000).unwrap();
        a.grow_to(100).unwrap();
        let mut c = b.hold();
        assert!(c.grow_to(5 * 1024).is_err());
        c.grow_to(4 * 1024).unwrap();
        drop(a);
        c.grow_to(10 * 1024).unwrap();
        assert!(b.hold().grow_to(1).is_err());
        drop(c);
        b.hold().grow_to(10 * 1024).unwrap();
        assert!(b.hold().grow_to(10 * 1024 + 1).is_err());
    }
}
