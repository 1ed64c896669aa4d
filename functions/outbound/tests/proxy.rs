//! A proxy named in the environment is never used: it would connect on taskq's behalf, past the
//! address check. Its own test binary, because it sets process-wide environment variables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use taskq_outbound::{Network, Outbound, Policy, Request};

#[tokio::test]
async fn proxy_variables_are_ignored() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let proxied = Arc::new(AtomicUsize::new(0));
    let p = proxied.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            p.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(name, format!("http://{proxy_addr}"));
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");

    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/", get(|| async { "direct" })))
            .await
            .unwrap()
    });
    let mut policy = Policy::public("test");
    policy.network = Network::PublicAnd(vec![receiver.ip()]);
    let r = Outbound::new(policy)
        .send(Request::new("GET", format!("http://{receiver}/")))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"direct"[..]));
    assert_eq!(proxied.load(Ordering::SeqCst), 0, "the proxy was used");
}
