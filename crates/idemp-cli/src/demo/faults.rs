//! The fault schedule: which attempt of which logical request meets which fault.
//!
//! Every decision is a pure function of the seed, the logical request's id and the
//! attempt's index (the n-th time that request reaches the fake API, or crosses the
//! flaky network), so both runs of the demo (through idemp, and direct) meet the same
//! storm, and a seed reproduces a run's faults exactly. Faults stop after
//! [`STORM_ATTEMPTS`] arrivals of one request, so a client that retries enough always
//! gets through.

use std::time::Duration;

/// Arrivals of one logical request that can meet a fault; later ones go through.
pub const STORM_ATTEMPTS: u32 = 4;

/// What the fake API does with one arrival of a request, before executing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFault {
    /// Execute the request.
    None,
    /// `429 rate_limit_error` with `retry-after-ms`; nothing executed.
    RateLimited {
        /// The delay asked for.
        retry_after: Duration,
    },
    /// `529 overloaded_error` with `retry-after-ms`; nothing executed.
    Overloaded {
        /// The delay asked for.
        retry_after: Duration,
    },
}

/// What the network between the agents and the API does with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// The response arrives.
    None,
    /// The connection is closed before the response: the client sees a reset.
    Reset,
    /// A gateway answers `502 Bad Gateway` instead of the response.
    BadGateway,
    /// A gateway answers `503 Service Unavailable` instead of the response.
    Unavailable,
}

/// The seeded schedule of faults.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    seed: u64,
}

impl Faults {
    /// The schedule of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The fault of the `arrival`-th (1-based) arrival of request `id` at the API.
    pub fn api(&self, id: &str, arrival: u32) -> ApiFault {
        if arrival > STORM_ATTEMPTS {
            return ApiFault::None;
        }
        let r = self.roll("api", id, arrival);
        let retry_after = Duration::from_millis(10 + (r >> 40) % 50);
        match r % 100 {
            0..8 => ApiFault::RateLimited { retry_after },
            8..15 => ApiFault::Overloaded { retry_after },
            _ => ApiFault::None,
        }
    }

    /// How long the API takes to answer the `arrival`-th arrival of request `id`.
    pub fn latency(&self, id: &str, arrival: u32) -> Duration {
        let r = self.roll("latency", id, arrival);
        // Mostly quick, sometimes slow: 2–20 ms, one in ten 20–60 ms.
        let ms = if r.is_multiple_of(10) {
            20 + (r >> 32) % 41
        } else {
            2 + (r >> 32) % 19
        };
        Duration::from_millis(ms)
    }

    /// The fault of the response to the `attempt`-th (1-based) attempt of request
    /// `id`, on its way back through the network.
    pub fn net(&self, id: &str, attempt: u32) -> NetFault {
        if attempt > STORM_ATTEMPTS {
            return NetFault::None;
        }
        match self.roll("net", id, attempt) % 100 {
            0..10 => NetFault::Reset,
            10..15 => NetFault::BadGateway,
            15..20 => NetFault::Unavailable,
            _ => NetFault::None,
        }
    }

    /// A uniform 64-bit number drawn from (seed, domain, id, n): FNV-1a over the
    /// inputs, finished with SplitMix64 (stable across platforms and releases).
    fn roll(&self, domain: &str, id: &str, n: u32) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        eat(&self.seed.to_le_bytes());
        eat(domain.as_bytes());
        eat(id.as_bytes());
        eat(&n.to_le_bytes());
        splitmix64(h)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults_other_seed_other_faults() {
        let a = Faults::new(7);
        let b = Faults::new(7);
        let c = Faults::new(8);
        let ids: Vec<String> = (0..200).map(|i| format!("order-{i}")).collect();
        let sched = |f: &Faults| -> Vec<(ApiFault, NetFault, Duration)> {
            ids.iter()
                .flat_map(|id| (1..=3).map(move |n| (id, n)))
                .map(|(id, n)| (f.api(id, n), f.net(id, n), f.latency(id, n)))
                .collect()
        };
        assert_eq!(sched(&a), sched(&b));
        assert_ne!(sched(&a), sched(&c));
    }

    #[test]
    fn rates_are_roughly_as_documented_and_the_storm_ends() {
        let f = Faults::new(42);
        let n = 20_000;
        let mut api = 0;
        let mut net = 0;
        for i in 0..n {
            let id = format!("r{i}");
            api += usize::from(f.api(&id, 1) != ApiFault::None);
            net += usize::from(f.net(&id, 2) != NetFault::None);
            assert_eq!(f.api(&id, STORM_ATTEMPTS + 1), ApiFault::None);
            assert_eq!(f.net(&id, STORM_ATTEMPTS + 1), NetFault::None);
            let l = f.latency(&id, 1);
            assert!(l >= Duration::from_millis(2) && l <= Duration::from_millis(60));
        }
        // 15% and 20% expected; wide bounds, the draw is deterministic anyway.
        assert!((2_400..3_600).contains(&api), "{api}");
        assert!((3_400..4_600).contains(&net), "{net}");
    }
}
