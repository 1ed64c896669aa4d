//! One webhook delivery: signed POSTs with retries, exponential backoff and jitter, all inside
//! one invocation; only public addresses are reached (see [`taskq_core::callback`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use taskq_core::callback::{is_loopback, is_public};
use url::{Host, Url};

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

/// Which addresses deliveries may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Public unicast addresses only, https only (Lambda).
    PublicOnly,
    /// Also loopback, over http or https (taskq-local, tests).
    AllowLoopback,
}

impl Network {
    fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || (*self == Network::AllowLoopback && is_loopback(ip))
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

/// A refused resolution: the host resolved only to addresses deliveries may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to no public address ({addrs})")]
struct ForbiddenAddress {
    host: String,
    addrs: String,
}

/// Resolves with the system resolver, then drops the addresses the network does not allow. The
/// check sits here, at connect time, because a name checked earlier may resolve differently
/// now (DNS rebinding); the addresses it returns are the ones connected to.
struct FilteringResolver(Network);

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let network = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| network.allows(a.ip())).collect();
            if allowed.is_empty() {
                let addrs = all.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(Box::new(ForbiddenAddress { host, addrs }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    secret: Arc<[u8]>,
    policy: RetryPolicy,
    network: Network,
}

/// One attempt's result: done, retry, or give up.
enum Attempt {
    Done(u16),
    Retry(String),
    Permanent(String),
}

impl Deliverer {
    pub fn new(secret: impl Into<Vec<u8>>, policy: RetryPolicy, network: Network) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(FilteringResolver(network))
            // A redirect could lead anywhere, inside included: not followed, it fails the delivery.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect on our behalf, past the address check.
            .no_proxy()
            .https_only(network == Network::PublicOnly)
            .connect_timeout(policy.attempt_timeout)
            .user_agent(concat!("taskq-webhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            secret: secret.into().into(),
            policy,
            network,
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

    /// IP literals never reach the resolver, so they are checked here.
    fn check_literal_address(&self, url: &str) -> Result<(), String> {
        let url = Url::parse(url).map_err(|e| format!("callback URL does not parse: {e}"))?;
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err("callback URL has no host".into()),
        };
        if self.network.allows(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address"))
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let now = chrono::Utc::now().timestamp();
        let request = self
            .client
            .post(&delivery.url)
            .timeout(self.policy.attempt_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &delivery.id)
            .header(EVENT_HEADER, &delivery.event)
            .header(SIGNATURE_HEADER, signature::header(&self.secret, now, &delivery.body))
            .body(delivery.body.clone());
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => Attempt::Done(status),
                    408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
                    300..=399 => Attempt::Permanent(format!("HTTP {status} (redirects are not followed)")),
                    _ => Attempt::Permanent(format!("HTTP {status}")),
                }
            }
            Err(e) => {
                let text = chain(&e);
                // A refused address or an unusable URL will not get better with retries.
                if forbidden(&e) || e.is_builder() {
                    Attempt::Permanent(text)
                } else {
                    Attempt::Retry(text)
                }
            }
        }
    }
}

fn forbidden(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<ForbiddenAddress>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its causes on one line (reqwest's own text alone says little: "error sending
/// request").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    text
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
