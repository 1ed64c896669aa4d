use std::process::ExitCode;

/// Why a command did not do what was asked. Each kind has its own exit code so scripts can
/// tell bad input from an unreachable server from a task that failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input files; nothing was sent.
    #[error("{0}")]
    Usage(String),
    #[error(
        "no token: pass --token or set TASKQ_TOKEN (for a local server: export TASKQ_TOKEN=$(taskq token --user NAME))"
    )]
    NoToken,
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("HTTP client: {0}")]
    Client(String),
    /// The server answered with a problem (4xx/5xx).
    #[error("{status} {title}: {detail}")]
    Api {
        status: u16,
        title: String,
        detail: String,
        problem: Option<serde_json::Value>,
    },
    #[error("the server answered {status} with a body that is not JSON: {start:?}")]
    NotJson { status: u16, start: String },
    /// `wait`: the task ended, but not in `succeeded`.
    #[error("task {id} ended {status}")]
    TaskNotSucceeded { id: String, status: String },
    #[error("task {id} is still {status} after {seconds} s")]
    WaitTimedOut { id: String, status: String, seconds: u64 },
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) | CliError::NoToken => 2,
            CliError::TaskNotSucceeded { .. } => 3,
            CliError::WaitTimedOut { .. } => 4,
            _ => 1,
        })
    }
}
