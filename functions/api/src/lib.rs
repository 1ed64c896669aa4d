//! taskq's HTTP API: one axum [`Router`] that runs under `lambda_http::run` in Lambda and under
//! `axum::serve` in the local server and tests.

pub mod auth;
mod body;
pub mod error;
mod etag;
mod limit;
mod observe;
pub mod origin;
mod routes;
mod state;

pub use auth::{Authenticator, Caller};
pub use error::ApiError;
pub use routes::router;
pub use state::AppState;

/// The OpenAPI 3.1 document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");
