use std::sync::Arc;

use taskq_core::TaskService;

use crate::auth::Authenticator;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub service: TaskService,
    pub auth: Arc<Authenticator>,
}

impl AppState {
    pub fn new(service: TaskService, auth: Authenticator) -> Self {
        Self {
            service,
            auth: Arc::new(auth),
        }
    }
}
