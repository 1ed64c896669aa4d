//! One webhook delivery: signed POSTs with retries, exponential backoff and jitter, all inside
//! one invocation, through the guarded outbound client (`taskq_outbound`: public addresses only).

use std::sync::Arc;
use std::time::Duration;

pub use taskq_outbound::Network;
use taskq_outbound::{Lookup, Outbound, OutboundError, Policy, Request, SystemLookup};

use crate::signature::{self, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};

/// How hard a delivery tries. The default's worst case, 4 attempts of 5 s with 1, 2 and 4 s
/// (plus up to half again of jitter) between them, is about 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one, up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// Connect, send and answer within this, per attempt.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (from 1): the exponential step, less up to half of it
    /// at random, so receivers coming back from an outage are not hit in lockstep.
    pub fn backoff(&self, n: u32) -> Duration {
        let step = self
            .base
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
            .min(self.cap);
        step.mul_f64(1.0 - fastrand::f64() / 2.0)
    }
}

/// What to send: built from a terminal task by [`crate::delivery_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stable per task and terminal event: receivers dedupe on it (`Taskq-Delivery`).
    pub id: String,
    /// `task.succeeded`, `task.failed`, `task.cancelled` or `task.dead` (`Taskq-Event`).
    pub event: String,
    pub url: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answered attempt number `attempts`.
    Delivered { status: u16, attempts: u32 },
    /// Given up: retries exhausted, or a permanent refusal (`permanent`: a 4xx other than 408
    /// and 429, a redirect, or an address deliveries may not reach).
    Failed {
        attempts: u32,
        error: String,
        permanent: bool,
    },
}

#[derive(Clone)]
pub struct Deliverer {
    outbound: Outbound,
    secret: Arc<[u8]>,
    policy: RetryPolicy,
}

/// One attempt's result: done, retry, or give up.
enum Attempt {
    Done(u16),
    Retry(String),
    Permanent(String),
}

impl Deliverer {
    /// Deliveries go through the guarded outbound client: https only unless loopback receivers
    /// are allowed, no redirects (a redirect fails the delivery), one attempt's timeout for
    /// connect and answer. The client is built here: a webhook sender without one cannot work.
    pub fn new(secret: impl Into<Vec<u8>>, policy: RetryPolicy, network: Network) -> Result<Self, OutboundError> {
        Self::with_lookup(secret, policy, network, Arc::new(SystemLookup))
    }

    /// As [`Deliverer::new`], resolving host names with `lookup` (tests).
    pub fn with_lookup(
        secret: impl Into<Vec<u8>>,
        policy: RetryPolicy,
        network: Network,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, OutboundError> {
        let outbound = Outbound::with_lookup(
            Policy {
                https_only: network == Network::PublicOnly,
                network,
                max_redirects: 0,
                connect_timeout: policy.attempt_timeout,
                total_timeout: policy.attempt_timeout,
                // Only the status matters: the body is not read.
                max_response_bytes: 0,
                user_agent: concat!("taskq-webhook/", env!("CARGO_PKG_VERSION")).to_owned(),
            },
            lookup,
        )
        .eager()?;
        Ok(Self {
            outbound,
            secret: secret.into().into(),
            policy,
        })
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Sends `delivery` until a 2xx, a permanent refusal or the last attempt.
    pub async fn deliver(&self, delivery: &Delivery) -> Outcome {
        if let Err(error) = self.check_literal_address(&delivery.url) {
            return Outcome::Failed {
                attempts: 0,
                error,
                permanent: true,
            };
        }
        let mut last = String::new();
        for n in 1..=self.policy.attempts.max(1) {
            match self.attempt(delivery).await {
                Attempt::Done(status) => return Outcome::Delivered { status, attempts: n },
                Attempt::Permanent(error) => {
                    return Outcome::Failed {
                        attempts: n,
                        error,
                        permanent: true,
                    }
                }
                Attempt::Retry(error) => {
                    tracing::info!(delivery = %delivery.id, attempt = n, error = %error, "webhook attempt failed");
                    last = error;
                }
            }
            if n < self.policy.attempts {
                tokio::time::sleep(self.policy.backoff(n)).await;
            }
        }
        Outcome::Failed {
            attempts: self.policy.attempts.max(1),
            error: last,
            permanent: false,
        }
    }

    /// Refused before any attempt: a URL no attempt may request.
    fn check_literal_address(&self, url: &str) -> Result<(), String> {
        self.outbound.check(url).map(|_| ()).map_err(|e| e.to_string())
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let now = chrono::Utc::now().timestamp();
        let request = Request::new("POST", delivery.url.clone())
            .header("content-type", "application/json")
            .header(DELIVERY_HEADER, delivery.id.clone())
            .header(EVENT_HEADER, delivery.event.clone())
            .header(SIGNATURE_HEADER, signature::header(&self.secret, now, &delivery.body))
            .body(delivery.body.clone());
        match self.outbound.send(request).await {
            Ok(response) => {
                let status = response.status;
                match status {
                    200..=299 => Attempt::Done(status),
                    408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
                    300..=399 => Attempt::Permanent(format!("HTTP {status} (redirects are not followed)")),
                    _ => Attempt::Permanent(format!("HTTP {status}")),
                }
            }
            // A refused address or an unusable URL will not get better with retries.
            Err(e) if e.is_retryable() => Attempt::Retry(e.to_string()),
            Err(e) => Attempt::Permanent(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_at_most_half_off() {
        let p = RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(1000),
            cap: Duration::from_millis(5000),
            attempt_timeout: Duration::from_secs(1),
        };
        for _ in 0..200 {
            for (n, full) in [(1, 1000), (2, 2000), (3, 4000), (4, 5000), (9, 5000)] {
                let d = p.backoff(n).as_millis() as u64;
                assert!(d >= full / 2 && d <= full, "attempt {n}: {d} ms");
            }
        }
    }
}
