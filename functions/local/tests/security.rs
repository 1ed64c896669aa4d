//! Tests that try to break in, through taskq-local over HTTP:
//! - outbound requests (the `webhook` task type and completion webhooks) aimed at loopback,
//!   private, link-local, metadata and reserved addresses, in every spelling the URL parser
//!   accepts, through a public-looking name that resolves to loopback, and through redirects
//!   from an allowed receiver: all refused, and a trap listener on 127.0.0.1 never sees a
//!   connection;
//! - token `sub`s that SQS, DynamoDB keys or Redis keys could choke on, or that try to collide
//!   with another user's derived id: each works end to end and stays its own user;
//! - another user's task ids on every route: 404 with the very body an unknown id gets.
//!
//! The outbound scenarios run on the embedded backends (the outbound guard does not depend on
//! the store); the identity and cross-tenant ones also on DynamoDB + SQS as moto speaks them,
//! with the status cache on redis-server.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::{json, Value};
use taskq_core::memory::MemoryQueueConfig;
use taskq_core::TaskId;
use taskq_local::{start, Backend, EventSourceConfig, LocalOptions, LocalServer, Network, WebhookRetryPolicy};
use taskq_outbound::Lookup;
use taskq_worker::WorkerConfig;

const SECRET: &str = "security-e2e-secret";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A TCP listener on 127.0.0.1 (and, where the host has IPv6, on [::1] at the same port) that
/// counts every connection it accepts and closes it. Nothing in these tests may ever reach it.
struct Trap {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Trap {
    async fn start() -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let mut listeners = vec![v4];
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            listeners.push(v6);
        }
        for listener in listeners {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    drop(conn);
                }
            });
        }
        Self { port, accepted }
    }

    /// Asserts nothing connected, then connects once itself: the trap does count (the zero is
    /// not a listener that stopped accepting).
    async fn assert_untouched(&self) {
        let port = self.port;
        assert_eq!(
            self.accepted.load(Ordering::SeqCst),
            0,
            "the trap on 127.0.0.1:{port} was connected to"
        );
        let _probe = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.accepted.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the trap on 127.0.0.1:{port} does not count connections"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A resolver with fixed answers (`LocalOptions.lookup`): public-looking names that resolve to
/// loopback and private addresses. Unknown names are an error. It remembers what it was asked.
struct Names {
    table: HashMap<&'static str, Vec<IpAddr>>,
    asked: Mutex<Vec<String>>,
}

const LOOPBACK_NAME: &str = "hooks.example.com";

impl Names {
    fn new() -> Arc<Self> {
        let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let table = HashMap::from([
            (LOOPBACK_NAME, vec![lo4]),
            ("hooks6.example.com", vec![lo6]),
            // One public-looking answer among them would not be enough either: none is public.
            (
                "mixed.example.com",
                vec![lo4, "10.0.0.1".parse().unwrap(), "169.254.169.254".parse().unwrap()],
            ),
            ("localhost", vec![lo4, lo6]),
        ]);
        Arc::new(Self {
            table,
            asked: Mutex::default(),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Lookup for Names {
    fn lookup(&self, host: String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        self.asked.lock().unwrap().push(host.clone());
        let answer = self.table.get(host.as_str()).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: not in the test resolver")))
        })
    }
}

/// The defaults that matter here (outbound `PublicOnly`, `callback.allow_loopback` false) left
/// as they are; only speeds and rate limits changed.
fn options(backend: Backend) -> LocalOptions {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.backend = backend;
    o.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    o.worker = WorkerConfig {
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_millis(400),
        ..WorkerConfig::default()
    };
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_millis(500),
        ..EventSourceConfig::default()
    };
    o.webhook_retry = WebhookRetryPolicy {
        attempts: 2,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(2),
    };
    o
}

fn memory_options() -> LocalOptions {
    options(Backend::Memory(MemoryQueueConfig::default()))
}

struct App {
    server: LocalServer,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn token(sub: &str) -> String {
    taskq_core::token::mint(SECRET, sub, &[], 600).unwrap()
}

impl App {
    async fn start(options: LocalOptions) -> Self {
        Self {
            server: start(options).await.expect("local server starts"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.server.base_url()))
            .bearer_auth(bearer);
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    async fn get(&self, sub: &str, path: &str) -> Reply {
        self.call(Method::GET, path, &token(sub), None, &[]).await
    }

    async fn post(&self, sub: &str, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, &token(sub), Some(body), &[]).await
    }

    /// Submits one task and returns it (202 asserted).
    async fn submit(&self, sub: &str, body: Value) -> Value {
        let r = self.post(sub, "/v1/tasks", &body).await;
        assert_eq!(r.status, 202, "submit {body} as {sub:?}: {}", r.body);
        r.body
    }

    /// The task once terminal (long-polling GET ?wait), failing after `within`.
    async fn settle(&self, sub: &str, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get(sub, &format!("/v1/tasks/{id}?wait=5")).await;
            assert_eq!(r.status, 200, "GET {id} as {sub:?}: {}", r.body);
            if is_terminal(&r.body) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not terminal in {within:?}: {}",
                r.body
            );
        }
    }

    async fn events(&self, sub: &str, id: &str) -> Vec<Value> {
        let r = self.get(sub, &format!("/v1/tasks/{id}/events")).await;
        assert_eq!(r.status, 200, "events of {id} as {sub:?}: {}", r.body);
        r.body["events"].as_array().unwrap().clone()
    }

    /// The task's events once one of them is a webhook outcome.
    async fn webhook_outcome(&self, sub: &str, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let events = self.events(sub, id).await;
            if kinds(&events).iter().any(|k| k.starts_with("webhook_")) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no webhook outcome recorded for {id}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("a task id").to_owned()
}

fn is_terminal(task: &Value) -> bool {
    matches!(
        task["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "dead")
    )
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The cross-backend fixtures: embedded store, queue and cache; or DynamoDB and SQS on moto with
/// the status cache and rate limiter on redis-server (as e2e.rs's `moto`). The resolver knows
/// `hooks.example.com` (loopback), so completion webhooks end quickly, refused.
async fn memory(_: &str) -> Option<App> {
    let mut o = memory_options();
    o.lookup = Some(Names::new());
    Some(App::start(o).await)
}

async fn moto(test: &str) -> Option<App> {
    let endpoint = taskq_aws::testing::endpoint(test)?;
    let redis = taskq_aws::testing::redis_url(test)?;
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 30).await;
    let (store, queue) = config.adapters_from(&sdk);
    let mut o = options(Backend::Ports {
        store: Arc::new(store),
        queue: Arc::new(queue),
    });
    o.redis = Some(taskq_aws::testing::redis_settings(&redis));
    o.lookup = Some(Names::new());
    Some(App::start(o).await)
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { if let Some(app) = super::memory(stringify!($name)).await { super::$name(app).await } })*
        }
        mod moto {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { if let Some(app) = super::moto(stringify!($name)).await { super::$name(app).await } })*
        }
    };
}

on_both_backends!(
    every_kind_of_sub_works_end_to_end_and_never_sees_another_subs_tasks,
    another_users_task_is_404_on_every_route_with_the_unknown_id_body,
);

// ---------------------------------------------------------------------------------------------
// 1. Refused addresses, the loopback switch off
// ---------------------------------------------------------------------------------------------

/// Hosts that name loopback, unspecified, private, link-local, metadata, multicast or reserved
/// addresses, in the spellings the URL parser accepts. `:PORT` (the trap's) is appended.
const REFUSED_HOSTS: &[(&str, &str)] = &[
    ("dotted loopback", "127.0.0.1"),
    ("short loopback", "127.1"),
    ("decimal loopback", "2130706433"),
    ("hex loopback", "0x7f000001"),
    ("octal loopback", "0177.0.0.1"),
    ("mixed hex loopback", "0x7f.1"),
    ("dotted hex loopback", "0x7f.0x0.0x0.0x1"),
    ("percent-encoded loopback", "%31%32%37.0.0.1"),
    ("trailing-dot loopback", "127.0.0.1."),
    ("localhost", "localhost"),
    ("LocalHost", "LocalHost"),
    ("credentials before loopback", "public.example@127.0.0.1"),
    ("IPv6 loopback", "[::1]"),
    ("IPv4-mapped loopback", "[::ffff:127.0.0.1]"),
    ("IPv4-mapped loopback, hex", "[::ffff:7f00:1]"),
    ("IPv4-compatible loopback", "[::127.0.0.1]"),
    ("unspecified IPv4", "0.0.0.0"),
    ("unspecified IPv6", "[::]"),
    ("zero", "0"),
    ("metadata IPv4", "169.254.169.254"),
    ("metadata IPv6", "[fd00:ec2::254]"),
    ("10/8", "10.0.0.1"),
    ("172.16/12", "172.16.0.1"),
    ("192.168/16", "192.168.0.1"),
    ("CGNAT", "100.64.0.1"),
    ("multicast IPv4", "224.0.0.1"),
    ("multicast IPv6", "[ff02::1]"),
    ("reserved", "240.0.0.1"),
    ("broadcast", "255.255.255.255"),
    ("link-local IPv6", "[fe80::1]"),
    ("NAT64 loopback", "[64:ff9b::7f00:1]"),
    ("6to4 loopback", "[2002:7f00:1::]"),
];

/// Whole URLs (`{P}`: the trap's port) and the error kind a `webhook` task to each must end with.
/// A scheme other than http(s) may be called either (both permanent, neither connects).
const ODD_URLS: &[(&str, &[&str])] = &[
    ("HTTP://127.0.0.1:{P}/", REFUSED),
    ("http:///127.0.0.1:{P}/", REFUSED),
    ("http:\\\\127.0.0.1:{P}\\x", REFUSED),
    ("file:///etc/passwd", NOT_HTTP),
    ("gopher://127.0.0.1:{P}/_x", NOT_HTTP),
    ("ftp://127.0.0.1:{P}/", NOT_HTTP),
    ("http://[::1/", INVALID),
    ("http://127.0.0.1:99999/", INVALID),
    ("http://127.0.0.256:{P}/", INVALID),
];
const REFUSED: &[&str] = &["webhook_refused"];
const INVALID: &[&str] = &["invalid_payload"];
const NOT_HTTP: &[&str] = &["webhook_refused", "invalid_payload"];

fn odd_url(template: &str, port: u16) -> String {
    template.replace("{P}", &port.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tasks_to_loopback_private_and_metadata_addresses_fail_refused_without_connecting() {
    let trap = Trap::start().await;
    let app = App::start(memory_options()).await;
    let user = "ssrf-webhook";
    let mut cases: Vec<(String, String, &[&str])> = Vec::new();
    for (label, host) in REFUSED_HOSTS {
        for scheme in ["http", "https"] {
            let url = format!("{scheme}://{host}:{}/latest/meta-data/", trap.port);
            cases.push((format!("{label} ({scheme})"), url, REFUSED));
        }
    }
    for (template, kind) in ODD_URLS {
        cases.push(((*template).to_owned(), odd_url(template, trap.port), *kind));
    }
    let mut submitted = Vec::new();
    for (label, url, kind) in &cases {
        let t = app
            .submit(
                user,
                json!({"type": "webhook", "payload": {"url": url}, "max_attempts": 3}),
            )
            .await;
        submitted.push((label, url, *kind, id_of(&t)));
    }
    let mut wrong = Vec::new();
    for (label, url, kind, id) in &submitted {
        let t = app.settle(user, id, Duration::from_secs(20)).await;
        let history = kinds(&app.events(user, id).await);
        let ok = t["status"] == "failed"
            && kind.iter().any(|k| t["error"]["kind"] == *k)
            && t["attempts"] == 1
            && history == ["submitted", "started", "failed"];
        if !ok {
            wrong.push(format!(
                "{label}: {url}: expected failed/{kind:?} after 1 attempt, got {} {} attempts {} history {history:?}",
                t["status"], t["error"], t["attempts"]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} URLs not refused as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    trap.assert_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_to_loopback_private_and_metadata_addresses_are_400_naming_callback_url() {
    let trap = Trap::start().await;
    let app = App::start(memory_options()).await;
    let user = "ssrf-callback";
    let mut urls = Vec::new();
    for (label, host) in REFUSED_HOSTS {
        for scheme in ["https", "http"] {
            urls.push((
                format!("{label} ({scheme})"),
                format!("{scheme}://{host}:{}/hook", trap.port),
            ));
        }
    }
    for (template, _) in ODD_URLS {
        urls.push(((*template).to_owned(), odd_url(template, trap.port)));
    }
    let mut wrong = Vec::new();
    for (label, url) in &urls {
        let r = app
            .post(user, "/v1/tasks", &json!({"type": "echo", "callback_url": url}))
            .await;
        let detail = r.body["detail"].as_str().unwrap_or_default();
        if r.status != 400 || r.body["field"] != "callback_url" || !detail.contains("callback_url") {
            wrong.push(format!("{label}: {url}: {} {}", r.status, r.body));
        }
    }
    // The same through a batch: every item refused on its own, naming its field.
    let items: Vec<Value> = urls
        .iter()
        .map(|(_, url)| json!({"type": "echo", "callback_url": url}))
        .collect();
    for (c, items) in items.chunks(100).enumerate() {
        let offset = c * 100;
        let r = app.post(user, "/v1/tasks/batch", &json!({"tasks": items})).await;
        assert_eq!(r.status, 202, "{}", r.body);
        for (i, result) in r.body["results"].as_array().unwrap().iter().enumerate() {
            let field = format!("tasks[{i}].callback_url");
            if result["error"]["status"] != 400 || result["error"]["field"] != field.as_str() {
                let (label, url) = &urls[offset + i];
                wrong.push(format!("batch item {label}: {url}: {result}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} callback URLs not refused at submit:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let listed = app.get(user, "/v1/tasks").await;
    assert_eq!(listed.body["tasks"], json!([]), "nothing was stored");
    // Anything wrongly accepted would have run and been delivered by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    trap.assert_untouched().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A public-looking name that resolves to loopback
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_looking_name_resolving_to_loopback_is_refused_at_connect_time() {
    let trap = Trap::start().await;
    let names = Names::new();
    let mut o = memory_options();
    o.lookup = Some(names.clone());
    let app = App::start(o).await;
    let user = "rebinder";
    let p = trap.port;

    // `webhook` tasks: the name passes the literal check and is refused in the resolver.
    let mut ids = Vec::new();
    for host in [LOOPBACK_NAME, "hooks6.example.com", "mixed.example.com"] {
        for scheme in ["http", "https"] {
            let url = format!("{scheme}://{host}:{p}/");
            let t = app
                .submit(user, json!({"type": "webhook", "payload": {"url": url}}))
                .await;
            ids.push((url, id_of(&t)));
        }
    }
    for (url, id) in &ids {
        let t = app.settle(user, id, Duration::from_secs(20)).await;
        assert_eq!(
            (
                t["status"].as_str(),
                t["error"]["kind"].as_str(),
                t["attempts"].as_u64()
            ),
            (Some("failed"), Some("webhook_refused"), Some(1)),
            "{url}: {t}"
        );
        assert!(
            t["error"]["message"].as_str().unwrap().contains("no public address"),
            "{url}: {t}"
        );
    }

    // A completion webhook: a host name cannot be judged at submit, so it is accepted; the
    // delivery is refused when the name resolves.
    let callback = format!("https://{LOOPBACK_NAME}:{p}/hook");
    let t = app
        .submit(
            user,
            json!({"type": "echo", "payload": {"x": 1}, "callback_url": callback}),
        )
        .await;
    assert_eq!(t["callback_url"], callback.as_str());
    let id = id_of(&t);
    assert_eq!(
        app.settle(user, &id, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let events = app.webhook_outcome(user, &id).await;
    assert_eq!(kinds(&events), ["submitted", "started", "succeeded", "webhook_failed"]);
    let detail = events[3]["detail"].as_str().unwrap();
    assert!(detail.contains("refused") && detail.contains(LOOPBACK_NAME), "{detail}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = names.asked();
    assert!(
        asked.iter().any(|h| h == LOOPBACK_NAME),
        "the resolver was used: {asked:?}"
    );
    trap.assert_untouched().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Redirects from an allowed receiver
// ---------------------------------------------------------------------------------------------

/// A receiver on 127.0.0.2 (the one address the server may reach besides public ones): `/ok`
/// answers 200, `/r/{n}` redirects as `redirects[n]` says. Counts requests per path.
struct Receiver {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Clone)]
struct ReceiverState {
    redirects: Arc<Vec<(u16, String)>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    /// `redirects` gets the receiver's own port, to build same-receiver locations.
    async fn start(redirects: impl FnOnce(u16) -> Vec<(u16, String)>) -> Self {
        async fn ok(State(s): State<ReceiverState>) -> impl IntoResponse {
            *s.hits.lock().unwrap().entry("/ok".into()).or_default() += 1;
            axum::Json(json!({"ok": true}))
        }
        async fn redirect(State(s): State<ReceiverState>, Path(n): Path<usize>) -> impl IntoResponse {
            *s.hits.lock().unwrap().entry(format!("/r/{n}")).or_default() += 1;
            let (status, location) = s.redirects[n].clone();
            (StatusCode::from_u16(status).unwrap(), [(header::LOCATION, location)])
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let state = ReceiverState {
            redirects: Arc::new(redirects(port)),
            hits: hits.clone(),
        };
        let app = axum::Router::new()
            .route("/ok", axum::routing::any(ok))
            .route("/r/{n}", axum::routing::any(redirect))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_from_an_allowed_receiver_to_loopback_are_refused() {
    let trap = Trap::start().await;
    let p = trap.port;
    let to_trap = format!("http://127.0.0.1:{p}/");
    let hops: Vec<(u16, String)> = vec![
        (301, to_trap.clone()),
        (302, to_trap.clone()),
        (303, to_trap.clone()),
        (307, to_trap.clone()),
        (308, to_trap.clone()),
        (302, format!("http://localhost:{p}/")),
        (302, format!("http://{LOOPBACK_NAME}:{p}/")),
        (302, format!("http://[::ffff:127.0.0.1]:{p}/")),
        (302, format!("http://2130706433:{p}/")),
        (302, format!("http://[::1]:{p}/")),
        (302, "http://169.254.169.254/latest/meta-data/".to_owned()),
    ];
    let refused = hops.len();
    let receiver = Receiver::start(|own| {
        let mut all = hops.clone();
        // [refused]: a second hop on the allowed receiver, then loopback.
        all.push((302, format!("http://127.0.0.2:{own}/r/1")));
        // [refused + 1]: a redirect to an allowed address, followed.
        all.push((302, format!("http://127.0.0.2:{own}/ok")));
        all
    })
    .await;
    let r = receiver.port;
    let allowed: IpAddr = "127.0.0.2".parse().unwrap();
    let mut o = memory_options();
    o.outbound = Network::PublicAnd(vec![allowed]);
    o.lookup = Some(Names::new());
    // Loopback callback URLs are accepted at submit here, so the delivery's own network check
    // is what stands in the way.
    o.callback.allow_loopback = true;
    let app = App::start(o).await;
    let user = "redirector";

    // The positive: the allowed receiver is reachable, directly and through a redirect.
    for path in ["/ok".to_owned(), format!("/r/{}", refused + 1)] {
        let url = format!("http://127.0.0.2:{r}{path}");
        let t = app
            .submit(user, json!({"type": "webhook", "payload": {"url": url}}))
            .await;
        let t = app.settle(user, &id_of(&t), Duration::from_secs(20)).await;
        assert_eq!(t["status"], "succeeded", "{url}: {t}");
        assert_eq!(t["result"], json!({"status": 200, "body": {"ok": true}}), "{url}");
    }

    // Every redirect towards loopback, metadata or a name resolving to loopback: refused.
    let mut ids = Vec::new();
    for n in 0..=refused {
        let url = format!("http://127.0.0.2:{r}/r/{n}");
        let t = app
            .submit(user, json!({"type": "webhook", "payload": {"url": url}}))
            .await;
        ids.push((n, url, id_of(&t)));
    }
    let mut wrong = Vec::new();
    for (n, url, id) in &ids {
        let t = app.settle(user, id, Duration::from_secs(20)).await;
        let to = receiver.hits.lock().unwrap().get(&format!("/r/{n}")).copied();
        // Each redirect served once (/r/1 twice: the two-hop case goes through it too).
        let expected_hits = if *n == 1 { 2 } else { 1 };
        // Refused at the redirect hop, or where the name it leads to resolves.
        let message = t["error"]["message"].as_str().unwrap_or_default();
        let why = message.contains("redirect") || message.contains("no public address");
        if t["status"] != "failed"
            || t["error"]["kind"] != "webhook_refused"
            || t["attempts"] != 1
            || !why
            || to != Some(expected_hits)
        {
            let location = hops.get(*n).map_or("a second hop, then loopback", |h| h.1.as_str());
            wrong.push(format!(
                "{url} (to {location}): {} {} attempts {}, receiver hits {to:?}",
                t["status"], t["error"], t["attempts"]
            ));
        }
    }
    assert!(wrong.is_empty(), "redirects not refused:\n{}", wrong.join("\n"));

    // Completion webhooks do not follow redirects at all, and loopback accepted at submit is
    // still refused at delivery.
    let cases = [
        (format!("http://127.0.0.2:{r}/ok"), "webhook_delivered", "HTTP 200"),
        (
            format!("http://127.0.0.2:{r}/r/1"),
            "webhook_failed",
            "redirects are not followed",
        ),
        (format!("http://127.0.0.1:{p}/hook"), "webhook_failed", "refused"),
        (format!("http://localhost:{p}/hook"), "webhook_failed", "refused"),
    ];
    for (callback, kind, says) in &cases {
        let t = app
            .submit(user, json!({"type": "echo", "callback_url": callback}))
            .await;
        let events = app.webhook_outcome(user, &id_of(&t)).await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], *kind, "{callback}: {events:?}");
        assert!(last["detail"].as_str().unwrap().contains(says), "{callback}: {last}");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.hits("/ok") >= 2, "the allowed receiver was reached");
    trap.assert_untouched().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Subs
// ---------------------------------------------------------------------------------------------

/// The user id a `sub` must get (taskq_core::identity): itself when it is 1-128 ASCII graphic
/// characters not starting with `~`, else `~` and its SHA-256 in hex.
fn expected_user_id(sub: &str) -> String {
    let usable = (1..=128).contains(&sub.len()) && sub.chars().all(|c| c.is_ascii_graphic()) && !sub.starts_with('~');
    if usable {
        sub.to_owned()
    } else {
        format!("~{}", sha256_hex(sub.as_bytes()))
    }
}

async fn every_kind_of_sub_works_end_to_end_and_never_sees_another_subs_tasks(app: App) {
    let derived_x_y = format!("~{}", sha256_hex(b"x y"));
    let subs: Vec<String> = vec![
        "s".repeat(128),
        "s".repeat(129),
        "y".repeat(300),
        "with space".into(),
        "with  space".into(),
        "José Ñandú".into(),
        "Jose Nandu".into(),
        "用户".into(),
        "a#b/c".into(),
        "a#b".into(),
        "U#x#T#y".into(),
        "U#x".into(),
        "~tilde".into(),
        "tilde".into(),
        "tab\tand\nnewline".into(),
        // The derived-id collision attempt: a sub spelled as the id "x y" is given.
        "x y".into(),
        derived_x_y.clone(),
        derived_x_y[1..].to_owned(),
    ];
    let mut ids: Vec<String> = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let priority = ["high", "normal", "low"][i % 3];
        let t = app
            .submit(sub, json!({"type": "echo", "payload": {"i": i}, "priority": priority}))
            .await;
        ids.push(id_of(&t));
    }
    for (i, sub) in subs.iter().enumerate() {
        let id = &ids[i];
        let t = app.settle(sub, id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "succeeded", "sub {sub:?}: {t}");
        assert_eq!(t["result"], json!({"i": i}), "sub {sub:?}");
        let got = app.get(sub, &format!("/v1/tasks/{id}")).await;
        assert_eq!((got.status, &got.body["id"]), (200, &json!(id)), "sub {sub:?}");
        let listed = app.get(sub, "/v1/tasks").await;
        assert_eq!(listed.status, 200, "sub {sub:?}: {}", listed.body);
        let listed: Vec<&str> = listed.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [id.as_str()], "sub {sub:?} lists its one task and nothing else");
        let events = app.events(sub, id).await;
        assert_eq!(kinds(&events), ["submitted", "started", "succeeded"], "sub {sub:?}");
        // Stored under the id the rule gives (so the collision attempt above is a real one).
        let owner = expected_user_id(sub);
        let stored = app
            .server
            .store
            .get(&owner, id.parse::<TaskId>().unwrap())
            .await
            .unwrap();
        assert!(stored.is_some(), "sub {sub:?}: task {id} not stored under {owner:?}");
    }
    assert_eq!(expected_user_id("x y"), derived_x_y);
    assert_ne!(expected_user_id(&derived_x_y), derived_x_y, "a ~ sub is itself hashed");

    // Nobody sees anybody else's task.
    let mut leaks = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let r = app.get(sub, &format!("/v1/tasks/{id}")).await;
            if r.status != 404 {
                leaks.push(format!("{sub:?} read {:?}'s task: {} {}", subs[j], r.status, r.body));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // No sub at all, or one too long to take: 401.
    for sub in ["", &"z".repeat(1025)] {
        for (method, path, body) in [
            (Method::GET, "/v1/tasks", None),
            (Method::POST, "/v1/tasks", Some(json!({"type": "echo"}))),
        ] {
            let r = app.call(method.clone(), path, &token(sub), body.as_ref(), &[]).await;
            assert_eq!(
                r.status,
                401,
                "{method} {path} with a sub of {} bytes: {}",
                sub.len(),
                r.body
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Cross-tenant
// ---------------------------------------------------------------------------------------------

const ALICE: &str = "alice";
/// Bob, and a user whose id is alice's with a status appended (as a status index key would be).
const ATTACKERS: &[&str] = &["bob", "alice#queued"];

async fn another_users_task_is_404_on_every_route_with_the_unknown_id_body(app: App) {
    // Alice's tasks, in every status a test can reach quickly, over all priorities.
    let done = app
        .submit(
            ALICE,
            json!({"type": "echo", "payload": {"secret": 1}, "priority": "high",
                   "callback_url": format!("https://{LOOPBACK_NAME}/hook")}),
        )
        .await;
    let failed = app
        .submit(
            ALICE,
            json!({"type": "fail", "payload": {"times": 5}, "max_attempts": 1, "priority": "low"}),
        )
        .await;
    let queued = app.submit(ALICE, json!({"type": "echo", "delay_seconds": 600})).await;
    let cancelled = app
        .submit(ALICE, json!({"type": "echo", "delay_seconds": 600, "priority": "low"}))
        .await;
    let (done, failed, queued, cancelled) = (id_of(&done), id_of(&failed), id_of(&queued), id_of(&cancelled));
    let r = app
        .post(ALICE, &format!("/v1/tasks/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("cancelled")), "{}", r.body);
    assert_eq!(
        app.settle(ALICE, &done, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    assert_eq!(
        app.settle(ALICE, &failed, Duration::from_secs(30)).await["status"],
        "failed"
    );
    // Alice's webhook history exists (and is hers to read).
    let webhook_events = app.webhook_outcome(ALICE, &done).await;
    assert_eq!(webhook_events.last().unwrap()["type"], "webhook_failed");
    let alice_ids = [done.clone(), failed.clone(), queued.clone(), cancelled.clone()];

    // Alice reads each (filling the status cache where there is one) and keeps the ETags.
    let mut etags = HashMap::new();
    for id in &alice_ids {
        let r = app.get(ALICE, &format!("/v1/tasks/{id}")).await;
        assert_eq!(r.status, 200);
        etags.insert(id.clone(), r.headers["etag"].to_str().unwrap().to_owned());
    }
    let queued_events_before = app.events(ALICE, &queued).await;

    let unknown = ulid::Ulid::new().to_string();
    for attacker in ATTACKERS {
        let own = id_of(&app.submit(attacker, json!({"type": "echo", "priority": "high"})).await);
        app.settle(attacker, &own, Duration::from_secs(30)).await;
        let own_queued = id_of(
            &app.submit(attacker, json!({"type": "echo", "delay_seconds": 600}))
                .await,
        );

        // What an id that exists nowhere gets, route by route.
        let bearer = token(attacker);
        let probe = |id: &str, route: usize| {
            let (method, path, headers): (Method, String, Vec<(&str, String)>) = match route {
                0 => (Method::GET, format!("/v1/tasks/{id}"), vec![]),
                1 => (Method::GET, format!("/v1/tasks/{id}?wait=2"), vec![]),
                2 => (
                    Method::GET,
                    format!("/v1/tasks/{id}"),
                    vec![(
                        "if-none-match",
                        etags.get(id).cloned().unwrap_or_else(|| "\"x\"".into()),
                    )],
                ),
                3 => (Method::GET, format!("/v1/tasks/{id}/events"), vec![]),
                _ => (Method::POST, format!("/v1/tasks/{id}/cancel"), vec![]),
            };
            let app = &app;
            let bearer = bearer.clone();
            async move {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let started = Instant::now();
                let r = app.call(method.clone(), &path, &bearer, None, &headers).await;
                (format!("{method} {path}"), r, started.elapsed())
            }
        };
        let routes = ["GET", "GET ?wait=2", "GET If-None-Match", "GET /events", "POST /cancel"];
        for (route, name) in routes.iter().enumerate() {
            let (_, baseline, _) = probe(&unknown, route).await;
            assert_eq!(baseline.status, 404, "{name} of an unknown id: {}", baseline.body);
            for id in &alice_ids {
                let (what, r, took) = probe(id, route).await;
                assert_eq!(r.status, 404, "{attacker} {what} (alice's): {}", r.body);
                assert_eq!(
                    r.body, baseline.body,
                    "{attacker} {what}: the body tells alice's id from an unknown one"
                );
                assert_eq!(
                    r.headers.get("content-type"),
                    baseline.headers.get("content-type"),
                    "{attacker} {what}"
                );
                assert!(r.headers.get("etag").is_none(), "{attacker} {what}: an ETag leaked");
                assert!(took < Duration::from_millis(1500), "{attacker} {what} took {took:?}");
            }
        }
        // A malformed id is the same 404 too.
        let (_, malformed, _) = probe("not-an-id", 0).await;
        let (_, baseline, _) = probe(&unknown, 0).await;
        assert_eq!((malformed.status, &malformed.body), (404, &baseline.body));

        // Lists: only the attacker's own tasks, under every filter and with alice's cursor.
        let mine: HashSet<&str> = [own.as_str(), own_queued.as_str()].into();
        let mut queries = vec![String::new()];
        let statuses = ["queued", "running", "succeeded", "failed", "cancelled", "dead"];
        let priorities = ["high", "normal", "low"];
        queries.extend(statuses.iter().map(|s| format!("status={s}")));
        queries.extend(priorities.iter().map(|p| format!("priority={p}")));
        for s in statuses {
            for p in priorities {
                queries.push(format!("status={s}&priority={p}"));
            }
        }
        let alice_page = app.get(ALICE, "/v1/tasks?limit=1").await;
        let cursor = alice_page.body["next_cursor"]
            .as_str()
            .expect("alice has more than one page")
            .to_owned();
        for q in queries.clone() {
            queries.push(format!("{q}&cursor={cursor}").trim_start_matches('&').to_owned());
        }
        let mut seen_own = HashSet::new();
        for q in &queries {
            let r = app.get(attacker, &format!("/v1/tasks?limit=100&{q}")).await;
            assert_eq!(r.status, 200, "{attacker} list {q}: {}", r.body);
            for t in r.body["tasks"].as_array().unwrap() {
                let id = t["id"].as_str().unwrap();
                assert!(mine.contains(id), "{attacker} list {q} returned {id}, not theirs: {t}");
                seen_own.insert(id.to_owned());
            }
        }
        assert_eq!(
            seen_own.len(),
            2,
            "{attacker}'s own tasks are listed (the lists are not just empty)"
        );

        // Idempotency keys are per user: the same key and body make the attacker a task of
        // their own, never a replay of alice's.
        let body = json!({"type": "echo", "payload": {"same": "body"}});
        let key = format!("shared-key-{attacker}");
        let hers = app
            .call(
                Method::POST,
                "/v1/tasks",
                &token(ALICE),
                Some(&body),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(hers.status, 202, "{}", hers.body);
        let theirs = app
            .call(
                Method::POST,
                "/v1/tasks",
                &bearer,
                Some(&body),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(theirs.status, 202, "{attacker} reusing alice's key: {}", theirs.body);
        assert!(theirs.headers.get("idempotent-replayed").is_none());
        assert_ne!(theirs.body["id"], hers.body["id"]);
        let replay = app
            .call(
                Method::POST,
                "/v1/tasks",
                &token(ALICE),
                Some(&body),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(
            (replay.status, &replay.body["id"]),
            (200, &hers.body["id"]),
            "alice's key still hers"
        );
        // The same through batch items.
        let key = format!("batch-key-{attacker}");
        let batch = json!({"tasks": [{"type": "echo", "payload": {"b": 1}, "idempotency_key": key}]});
        let hers = app.post(ALICE, "/v1/tasks/batch", &batch).await;
        let theirs = app.post(attacker, "/v1/tasks/batch", &batch).await;
        let (her_id, their_id) = (
            hers.body["results"][0]["task"]["id"]
                .as_str()
                .expect("alice's batch item")
                .to_owned(),
            theirs.body["results"][0]["task"]["id"]
                .as_str()
                .expect("the attacker's batch item")
                .to_owned(),
        );
        assert_ne!(her_id, their_id, "{attacker}'s batch item replayed alice's");
        assert_eq!(app.get(attacker, &format!("/v1/tasks/{her_id}")).await.status, 404);
        assert_eq!(app.get(ALICE, &format!("/v1/tasks/{their_id}")).await.status, 404);
        // Naming the owner in the body is refused, alone or in a batch.
        let r = app
            .post(attacker, "/v1/tasks", &json!({"type": "echo", "user_id": ALICE}))
            .await;
        assert_eq!((r.status, &r.body["field"]), (400, &json!("user_id")), "{}", r.body);
        let r = app
            .post(
                attacker,
                "/v1/tasks/batch",
                &json!({"tasks": [{"type": "echo", "user_id": ALICE}]}),
            )
            .await;
        assert_eq!(r.body["results"][0]["error"]["field"], "tasks[0].user_id", "{}", r.body);
    }

    // Alice's tasks are as they were: the attackers' cancels did nothing.
    for id in &alice_ids {
        let r = app.get(ALICE, &format!("/v1/tasks/{id}")).await;
        assert_eq!(
            r.headers["etag"].to_str().unwrap(),
            etags[id],
            "alice's task {id} changed: {}",
            r.body
        );
    }
    assert_eq!(
        app.get(ALICE, &format!("/v1/tasks/{queued}")).await.body["status"],
        "queued"
    );
    assert_eq!(app.events(ALICE, &queued).await, queued_events_before);
    let events = app.events(ALICE, &done).await;
    assert_eq!(
        kinds(&events),
        kinds(&webhook_events),
        "alice's webhook history unchanged"
    );
}

/// SHA-256 in hex, for predicting derived user ids (the API hashes with aws-lc-rs too).
fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn sha256_matches_known_digests() {
    assert_eq!(
        sha256_hex(b"x y"),
        "887fcea6a80333c6c02ae7e79735f0edad8d811f0b61431495f796f4bf6a7c19"
    );
}
