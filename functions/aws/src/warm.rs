//! Cold-start work that runs beside `main`'s wiring instead of in front of it.
//!
//! Each SDK crate parses its endpoint partition table (JSON) and compiles its region regexes the
//! first time one of its clients is built: about 0.38M instructions per crate, most of the cost
//! of building a client (BENCHMARKS.md, "Where init time went"). `start` hands those to the
//! runtime's worker threads, idle at that point, while `main` sets up logging, reads its
//! settings and loads the SDK configuration. When `main` reaches `Client::new` the table is ready
//! or being finished: the SDK keeps it in a `LazyLock`, so it is parsed once, by whoever asks
//! first, and a client never sees a half-built one.
//!
//! Workers rather than a thread of its own: spawning, and at exit unmapping, a thread cost about
//! as much as the parse it would take off `main` (measured: no gain).

/// An SDK client whose endpoint table `start` can parse ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    DynamoDb,
    Sqs,
}

/// Starts one task per client on the current tokio runtime and returns at once. Outside a
/// runtime it does nothing: the clients then parse their tables themselves, as without it.
pub fn start(clients: &[Client]) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for &client in clients {
        drop(runtime.spawn(async move {
            match client {
                Client::DynamoDb => drop(aws_sdk_dynamodb::config::endpoint::DefaultResolver::new()),
                Client::Sqs => drop(aws_sdk_sqs::config::endpoint::DefaultResolver::new()),
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the clients resolve to after `start`: the tables the warm-up tasks parsed (or are
    /// parsing, when the client gets there first) must be whole, for either runtime flavour.
    async fn endpoints_after_start() -> (String, String) {
        start(&[Client::DynamoDb, Client::Sqs]);
        use aws_sdk_dynamodb::config::endpoint::ResolveEndpoint as _;
        use aws_sdk_sqs::config::endpoint::ResolveEndpoint as _;
        let ddb_params = aws_sdk_dynamodb::config::endpoint::Params::builder()
            .region("eu-west-1")
            .build()
            .expect("params");
        let sqs_params = aws_sdk_sqs::config::endpoint::Params::builder()
            .region("eu-west-1")
            .build()
            .expect("params");
        let ddb = aws_sdk_dynamodb::config::endpoint::DefaultResolver::new()
            .resolve_endpoint(&ddb_params)
            .await
            .expect("DynamoDB endpoint");
        let sqs = aws_sdk_sqs::config::endpoint::DefaultResolver::new()
            .resolve_endpoint(&sqs_params)
            .await
            .expect("SQS endpoint");
        (ddb.url().to_owned(), sqs.url().to_owned())
    }

    #[test]
    fn outside_a_runtime_it_does_nothing_and_does_not_panic() {
        start(&[Client::DynamoDb, Client::Sqs]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_resolve_with_the_tables_the_workers_parsed() {
        let (ddb, sqs) = endpoints_after_start().await;
        assert_eq!(ddb, "https://dynamodb.eu-west-1.amazonaws.com");
        assert_eq!(sqs, "https://sqs.eu-west-1.amazonaws.com");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_the_clients_parse_first_and_still_resolve() {
        let (ddb, sqs) = endpoints_after_start().await;
        assert_eq!(ddb, "https://dynamodb.eu-west-1.amazonaws.com");
        assert_eq!(sqs, "https://sqs.eu-west-1.amazonaws.com");
    }
}
