use std::sync::Arc;

use taskq_core::cache::{CacheDescriber, RateLimiter};
use taskq_core::memory::MemoryRateLimiter;
use taskq_core::rate::RolePolicy;
use taskq_core::{SubmitRules, TaskService};

use crate::auth::Authenticator;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub service: TaskService,
    pub auth: Arc<Authenticator>,
    pub policy: Arc<RolePolicy>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Describes the cache deployment for `GET /v1/admin/cache` (none: the route says so).
    pub cache_info: Option<Arc<dyn CacheDescriber>>,
    /// What submissions may contain beyond the defaults (loopback callbacks, for local use).
    pub submit_rules: SubmitRules,
    /// When set, every request must carry it in `X-Taskq-Origin-Verify` (see [`crate::origin`]).
    pub origin_secret: Option<Arc<str>>,
}

impl AppState {
    /// Default role policy, limited in this process.
    pub fn new(service: TaskService, auth: Authenticator) -> Self {
        Self {
            service,
            auth: Arc::new(auth),
            policy: Arc::new(RolePolicy::default()),
            limiter: Arc::new(MemoryRateLimiter::new()),
            cache_info: None,
            submit_rules: SubmitRules::default(),
            origin_secret: None,
        }
    }

    pub fn with_limits(mut self, policy: RolePolicy, limiter: Arc<dyn RateLimiter>) -> Self {
        self.policy = Arc::new(policy);
        self.limiter = limiter;
        self
    }

    pub fn with_submit_rules(mut self, rules: SubmitRules) -> Self {
        self.submit_rules = rules;
        self
    }

    /// Requires CloudFront's origin secret on every request (`TASKQ_ORIGIN_VERIFY`).
    pub fn with_origin_secret(mut self, secret: impl Into<Arc<str>>) -> Self {
        self.origin_secret = Some(secret.into());
        self
    }

    pub fn with_cache_info(mut self, info: Arc<dyn CacheDescriber>) -> Self {
        self.cache_info = Some(info);
        self
    }
}
