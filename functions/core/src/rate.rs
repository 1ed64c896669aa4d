//! Role-based request policy: how fast a caller may call (`TASKQ_RATE_LIMITS`) and the highest
//! priority it may submit (`TASKQ_MAX_PRIORITY`), and the GCRA arithmetic both rate limiters
//! (in-process here, Redis in `taskq-aws`) share.
//!
//! GCRA (generic cell rate algorithm) keeps one number per key, the theoretical arrival time
//! (TAT) of the next request. A request is allowed when it would not push the TAT more than
//! `burst` emission intervals into the future. It is a token bucket with exact refill and a
//! single stored value, which makes it one atomic read-modify-write in Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::task::Priority;

/// The role whose limits apply to callers with none of the listed roles.
pub const DEFAULT_ROLE: &str = "default";

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_second: f64,
    pub burst: u32,
}

impl Quota {
    /// Time between two requests at the sustained rate, in microseconds.
    pub fn emission_us(&self) -> u64 {
        (1_000_000.0 / self.per_second).ceil() as u64
    }

    /// More generous: higher sustained rate, then larger burst.
    fn more_generous(self, other: Quota) -> Quota {
        if (other.per_second, other.burst) > (self.per_second, self.burst) {
            other
        } else {
            self
        }
    }
}

/// What a limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The burst size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests that could be made now, after this one (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the budget is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// When denied: until one request would be allowed (`Retry-After`).
    pub retry_after: Duration,
}

/// One GCRA step. `tat_us` is the stored theoretical arrival time (None: never seen or expired),
/// `now_us` the clock. Returns the decision and, when allowed, the TAT to store.
pub fn gcra(tat_us: Option<u64>, now_us: u64, quota: Quota) -> (RateDecision, Option<u64>) {
    let t = i128::from(quota.emission_us());
    let now = i128::from(now_us);
    let tat = i128::from(tat_us.unwrap_or(now_us)).max(now);
    let new_tat = tat + t;
    // Signed: early in a clock's life `new_tat` can be below the tolerance.
    let allow_at = new_tat - t * i128::from(quota.burst);
    let micros = |v: i128| Duration::from_micros(v.clamp(0, i128::from(u64::MAX)) as u64);
    if allow_at > now {
        let decision = RateDecision {
            allowed: false,
            limit: quota.burst,
            remaining: 0,
            reset: micros(tat - now),
            retry_after: micros(allow_at - now),
        };
        return (decision, None);
    }
    let decision = RateDecision {
        allowed: true,
        limit: quota.burst,
        remaining: ((now - allow_at) / t).clamp(0, i128::from(u32::MAX)) as u32,
        reset: micros(new_tat - now),
        retry_after: Duration::ZERO,
    };
    (decision, Some(new_tat as u64))
}

#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    #[error("TASKQ_RATE_LIMITS: {0}")]
    RateLimits(String),
    #[error("TASKQ_MAX_PRIORITY: {0}")]
    MaxPriority(String),
}

/// Per-role limits. A caller with several roles gets the most generous of each.
#[derive(Debug, Clone, PartialEq)]
pub struct RolePolicy {
    rates: BTreeMap<String, Quota>,
    max_priority: BTreeMap<String, Priority>,
}

impl Default for RolePolicy {
    /// 20 requests/s with bursts of 40 for everyone, 200/s and 400 for `admin`; every role may
    /// submit `high`.
    fn default() -> Self {
        let rates = BTreeMap::from([
            (
                DEFAULT_ROLE.to_owned(),
                Quota {
                    per_second: 20.0,
                    burst: 40,
                },
            ),
            (
                "admin".to_owned(),
                Quota {
                    per_second: 200.0,
                    burst: 400,
                },
            ),
        ]);
        let max_priority = BTreeMap::from([(DEFAULT_ROLE.to_owned(), Priority::High)]);
        Self { rates, max_priority }
    }
}

impl RolePolicy {
    /// Parses both settings; `None` (unset) keeps the default of that setting.
    ///
    /// `rate_limits`: `{"default": {"per_second": 10, "burst": 20}, "admin": {...}}`.
    /// `max_priority`: `{"default": "normal", "admin": "high"}`.
    pub fn parse(rate_limits: Option<&str>, max_priority: Option<&str>) -> Result<Self, PolicyError> {
        let mut policy = Self::default();
        if let Some(raw) = rate_limits {
            let rates: BTreeMap<String, Quota> =
                serde_json::from_str(raw).map_err(|e| PolicyError::RateLimits(e.to_string()))?;
            for (role, q) in &rates {
                if !(q.per_second.is_finite() && q.per_second > 0.0 && q.per_second <= 1_000_000.0) {
                    return Err(PolicyError::RateLimits(format!(
                        "{role}: per_second must be a number above 0 and at most 1000000"
                    )));
                }
                if q.burst == 0 {
                    return Err(PolicyError::RateLimits(format!("{role}: burst must be at least 1")));
                }
            }
            if !rates.contains_key(DEFAULT_ROLE) {
                return Err(PolicyError::RateLimits(format!(
                    "needs a \"{DEFAULT_ROLE}\" entry for callers with none of the listed roles"
                )));
            }
            policy.rates = rates;
        }
        if let Some(raw) = max_priority {
            let map: BTreeMap<String, String> =
                serde_json::from_str(raw).map_err(|e| PolicyError::MaxPriority(e.to_string()))?;
            let mut parsed = BTreeMap::new();
            for (role, p) in map {
                let p = p
                    .parse::<Priority>()
                    .map_err(|m| PolicyError::MaxPriority(format!("{role}: {m}")))?;
                parsed.insert(role, p);
            }
            if !parsed.contains_key(DEFAULT_ROLE) {
                return Err(PolicyError::MaxPriority(format!("needs a \"{DEFAULT_ROLE}\" entry")));
            }
            policy.max_priority = parsed;
        }
        Ok(policy)
    }

    /// From `TASKQ_RATE_LIMITS` and `TASKQ_MAX_PRIORITY`.
    pub fn from_env() -> Result<Self, PolicyError> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        Self::parse(
            var("TASKQ_RATE_LIMITS").as_deref(),
            var("TASKQ_MAX_PRIORITY").as_deref(),
        )
    }

    fn matching<'a, T: Copy>(map: &'a BTreeMap<String, T>, roles: &'a [String]) -> impl Iterator<Item = T> + 'a {
        let listed: Vec<T> = roles.iter().filter_map(|r| map.get(r).copied()).collect();
        let fallback = if listed.is_empty() {
            map.get(DEFAULT_ROLE).copied()
        } else {
            None
        };
        listed.into_iter().chain(fallback)
    }

    /// The rate for a caller with these roles.
    pub fn quota(&self, roles: &[String]) -> Quota {
        Self::matching(&self.rates, roles)
            .reduce(Quota::more_generous)
            .unwrap_or(Quota {
                per_second: 1.0,
                burst: 1,
            })
    }

    /// The highest priority a caller with these roles may submit.
    pub fn max_priority(&self, roles: &[String]) -> Priority {
        // Priority orders high < normal < low (declaration order), so "highest" is the minimum.
        Self::matching(&self.max_priority, roles).min().unwrap_or(Priority::Low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        per_second: 10.0,
        burst: 3,
    };

    #[test]
    fn burst_then_deny_then_refill() {
        let mut tat = None;
        let now = 1_000_000_000;
        for expected_remaining in [2, 1, 0] {
            let (d, t) = gcra(tat, now, Q);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = t;
        }
        let (d, t) = gcra(tat, now, Q);
        assert!(!d.allowed);
        assert_eq!(t, None);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert_eq!(d.reset, Duration::from_millis(300));
        // One emission interval later exactly one more request fits.
        let (d, t) = gcra(tat, now + 100_000, Q);
        assert!(d.allowed && d.remaining == 0);
        let (d, _) = gcra(t, now + 100_000, Q);
        assert!(!d.allowed);
        // After a full reset the whole burst is back.
        let (d, _) = gcra(tat, now + 10_000_000, Q);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn most_generous_role_wins_and_default_is_for_callers_with_no_listed_role() {
        let p = RolePolicy::parse(
            Some(r#"{"default":{"per_second":1,"burst":2},"ops":{"per_second":5,"burst":5},"admin":{"per_second":50,"burst":1}}"#),
            Some(r#"{"default":"low","ops":"normal","admin":"high"}"#),
        )
        .unwrap();
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(p.quota(&roles(&[])).burst, 2);
        assert_eq!(p.quota(&roles(&["unknown"])).burst, 2);
        assert_eq!(p.quota(&roles(&["ops", "admin"])).per_second, 50.0);
        assert_eq!(p.max_priority(&roles(&[])), Priority::Low);
        assert_eq!(p.max_priority(&roles(&["ops"])), Priority::Normal);
        assert_eq!(p.max_priority(&roles(&["ops", "admin"])), Priority::High);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        assert!(RolePolicy::parse(Some("{"), None).is_err());
        assert!(RolePolicy::parse(Some(r#"{"admin":{"per_second":1,"burst":1}}"#), None).is_err());
        assert!(RolePolicy::parse(Some(r#"{"default":{"per_second":0,"burst":1}}"#), None).is_err());
        assert!(RolePolicy::parse(Some(r#"{"default":{"per_second":1,"burst":0}}"#), None).is_err());
        assert!(RolePolicy::parse(Some(r#"{"default":{"per_second":1,"burst":1,"x":1}}"#), None).is_err());
        assert!(RolePolicy::parse(None, Some(r#"{"default":"urgent"}"#)).is_err());
        assert_eq!(RolePolicy::parse(None, None).unwrap(), RolePolicy::default());
    }
}
