//! Logging for every binary: JSON lines in Lambda (CloudWatch parses them), readable text
//! elsewhere. `RUST_LOG` sets the filter (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // try_init: tests and the local server may call this more than once.
    let _ = if in_lambda {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time() // CloudWatch stamps each line
            .with_ansi(false)
            .try_init()
    } else {
        builder.with_writer(std::io::stderr).try_init()
    };
}
