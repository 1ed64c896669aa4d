//! The guarded client against real listeners: what it must refuse never receives a connection,
//! and what it may reach works (so a refusal is not just everything failing).
//!
//! Linux routes all of 127.0.0.0/8 to loopback: an "allowed" receiver binds 127.0.0.2 and the
//! network allows exactly that address (`Network::PublicAnd`), while a counting listener on
//! 127.0.0.1 stands for everything that must stay out of reach.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use taskq_outbound::{Lookup, Network, Outbound, OutboundError, Policy, Request};

/// A listener that counts accepted connections and answers nothing useful.
async fn counting_listener(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (addr, count)
}

async fn serve(ip: &str, app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Host names with fixed answers.
struct Fixed(HashMap<String, Vec<IpAddr>>);

impl Lookup for Fixed {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let answer = self.0.get(&host).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no such host {host}")))
        })
    }
}

fn lookup(entries: &[(&str, &[&str])]) -> Arc<dyn Lookup> {
    Arc::new(Fixed(
        entries
            .iter()
            .map(|(h, ips)| (h.to_string(), ips.iter().map(|i| i.parse().unwrap()).collect()))
            .collect(),
    ))
}

fn allowed() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

fn policy() -> Policy {
    let mut p = Policy::public("test");
    p.network = Network::PublicAnd(vec![allowed()]);
    p.connect_timeout = Duration::from_secs(2);
    p.total_timeout = Duration::from_secs(5);
    p
}

fn client(p: Policy, names: &[(&str, &[&str])]) -> Outbound {
    Outbound::with_lookup(p, lookup(names))
}

fn redirect_to(location: String) -> Router {
    Router::new()
        .route(
            "/go",
            get(move || {
                let location = location.clone();
                async move { (StatusCode::FOUND, [(header::LOCATION, location)]).into_response() }
            }),
        )
        .route("/ok", get(|| async { "fine" }))
}

#[tokio::test]
async fn an_allowed_receiver_is_reached_and_its_answer_returned() {
    let receiver = serve("127.0.0.2", redirect_to(String::new())).await;
    let out = client(policy(), &[("receiver.test", &["127.0.0.2"])]);
    for url in [
        format!("http://{receiver}/ok"),
        format!("http://receiver.test:{}/ok", receiver.port()),
    ] {
        let r = out.send(Request::new("GET", &url)).await.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.truncated),
            (200, &b"fine"[..], false),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_public_looking_name_that_resolves_to_loopback_is_refused_before_connecting() {
    let (target, hits) = counting_listener("127.0.0.1").await;
    let out = client(
        policy(),
        &[
            ("hooks.example.com", &["127.0.0.1"]),
            ("metadata.example.com", &["169.254.169.254", "fd00:ec2::254"]),
            ("private.example.com", &["10.0.0.7"]),
        ],
    );
    for host in ["hooks.example.com", "metadata.example.com", "private.example.com"] {
        let e = out
            .send(Request::new("GET", format!("http://{host}:{}/", target.port())))
            .await
            .unwrap_err();
        assert!(matches!(e, OutboundError::Refused(_)), "{host}: {e:?}");
        assert!(!e.is_retryable());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn of_a_mixed_answer_only_the_allowed_addresses_are_connected_to() {
    // A name answering loopback first and the allowed address second: the refused address is
    // dropped from the list connected to, so the loopback listener sees nothing.
    let (forbidden, hits) = counting_listener("127.0.0.1").await;
    let receiver = serve("127.0.0.2", redirect_to(String::new())).await;
    assert_ne!(forbidden.port(), 0);
    let out = client(policy(), &[("both.example.com", &["127.0.0.1", "127.0.0.2"])]);
    let r = out
        .send(Request::new(
            "GET",
            format!("http://both.example.com:{}/ok", receiver.port()),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirects_to_loopback_in_any_spelling_are_refused() {
    let (target, hits) = counting_listener("127.0.0.1").await;
    let port = target.port();
    let names: &[(&str, &[&str])] = &[
        ("hooks.example.com", &["127.0.0.1"]),
        ("localhost", &["127.0.0.1", "::1"]),
    ];
    for location in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://hooks.example.com:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("ftp://127.0.0.2:{port}/"),
    ] {
        let receiver = serve("127.0.0.2", redirect_to(location.clone())).await;
        let out = client(policy(), names);
        let e = out
            .send(Request::new("GET", format!("http://{receiver}/go")))
            .await
            .unwrap_err();
        assert!(matches!(e, OutboundError::Refused(_)), "{location}: {e:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirects_within_reach_are_followed_up_to_the_limit() {
    let receiver = serve("127.0.0.2", redirect_to("/ok".into())).await;
    let r = client(policy(), &[])
        .send(Request::new("GET", format!("http://{receiver}/go")))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));

    // A loop: /go -> /go -> ... stops after max_redirects with a refusal.
    let looping = serve("127.0.0.2", redirect_to("/go".into())).await;
    let e = client(policy(), &[])
        .send(Request::new("GET", format!("http://{looping}/go")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, OutboundError::Refused(ref m) if m.contains("redirects")),
        "{e:?}"
    );

    // No redirects at all: the 3xx comes back as it is.
    let mut none = policy();
    none.max_redirects = 0;
    let r = client(none, &[])
        .send(Request::new("GET", format!("http://{receiver}/go")))
        .await
        .unwrap();
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn the_body_read_stops_at_the_cap() {
    let big = Router::new().route("/big", get(|| async { "x".repeat(200_000) }));
    let receiver = serve("127.0.0.2", big).await;
    let mut p = policy();
    p.max_response_bytes = 1024;
    let r = client(p, &[])
        .send(Request::new("GET", format!("http://{receiver}/big")))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len(), r.truncated), (200, 1024, true));
}

#[tokio::test]
async fn a_slow_receiver_hits_the_total_timeout() {
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late"
        }),
    );
    let receiver = serve("127.0.0.2", slow).await;
    let mut p = policy();
    p.total_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let e = client(p, &[])
        .send(Request::new("GET", format!("http://{receiver}/slow")))
        .await
        .unwrap_err();
    assert!(matches!(e, OutboundError::Timeout(_)), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn https_only_refuses_http_and_bad_input_is_invalid() {
    let mut p = policy();
    p.https_only = true;
    let out = client(p, &[]);
    let e = out.send(Request::new("GET", "http://127.0.0.2:1/")).await.unwrap_err();
    assert!(matches!(e, OutboundError::Refused(_)), "{e:?}");
    let out = client(policy(), &[]);
    for (method, url) in [
        ("GET", "not a url"),
        ("GET", "http://"),
        ("BAD METHOD", "http://127.0.0.2:1/"),
    ] {
        let e = out.send(Request::new(method, url)).await.unwrap_err();
        assert!(matches!(e, OutboundError::Invalid(_)), "{method} {url}: {e:?}");
    }
}

#[tokio::test]
async fn the_loopback_switch_is_off_unless_chosen() {
    let (target, hits) = counting_listener("127.0.0.1").await;
    let e = Outbound::new(Policy::public("test"))
        .send(Request::new("GET", format!("http://{target}/")))
        .await
        .unwrap_err();
    assert!(matches!(e, OutboundError::Refused(_)), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let mut local = Policy::public("test");
    local.network = Network::AllowLoopback;
    let receiver = serve("127.0.0.1", redirect_to(String::new())).await;
    let r = Outbound::new(local)
        .send(Request::new("GET", format!("http://{receiver}/ok")))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
