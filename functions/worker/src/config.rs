use std::time::Duration;

/// Worker settings. Only `main` (and the local server) read the environment.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Backoff before the first retry; doubles per attempt, with jitter, up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Records are not started when less than this is left of the invocation.
    pub deadline_margin: Duration,
    /// A running attempt's lease lasts its timeout plus this grace.
    pub lease_grace: Duration,
    /// How often a running task's record is re-read for a cancellation request (one read per
    /// period per running task; tasks shorter than this are never re-read).
    pub cancel_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(2),
            retry_cap: Duration::from_secs(300),
            deadline_margin: Duration::from_secs(3),
            lease_grace: Duration::from_secs(30),
            cancel_poll: Duration::from_secs(5),
        }
    }
}

impl WorkerConfig {
    /// Reads `TASKQ_RETRY_BASE_MS`, `TASKQ_RETRY_CAP_MS`, `TASKQ_DEADLINE_MARGIN_MS` and
    /// `TASKQ_LEASE_GRACE_SECONDS`, `TASKQ_CANCEL_POLL_MS`, keeping defaults for those unset; reports every bad one.
    pub fn from_env() -> Result<Self, String> {
        let mut config = Self::default();
        let mut errors = Vec::new();
        let mut read = |name: &str, unit_ms: u64, slot: &mut Duration| {
            if let Ok(v) = std::env::var(name) {
                match v.parse::<u64>() {
                    Ok(n) => *slot = Duration::from_millis(n * unit_ms),
                    Err(_) => errors.push(format!("{name}={v:?} is not a whole number")),
                }
            }
        };
        read("TASKQ_RETRY_BASE_MS", 1, &mut config.retry_base);
        read("TASKQ_RETRY_CAP_MS", 1, &mut config.retry_cap);
        read("TASKQ_DEADLINE_MARGIN_MS", 1, &mut config.deadline_margin);
        read("TASKQ_LEASE_GRACE_SECONDS", 1000, &mut config.lease_grace);
        read("TASKQ_CANCEL_POLL_MS", 1, &mut config.cancel_poll);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries of tasks
    /// that failed together spread out but none comes back immediately.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.retry_cap);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = WorkerConfig::default();
        for _ in 0..100 {
            let first = c.backoff(1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let third = c.backoff(3);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            assert!(c.backoff(25) <= Duration::from_secs(300));
            assert!(c.backoff(25) >= Duration::from_secs(150));
        }
    }
}
