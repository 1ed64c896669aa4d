//! The one HTTP client for every request taskq makes on a user's behalf: the `webhook` task
//! type, completion webhooks, and any future HTTP target.
//!
//! The URL is chosen by a tenant, so the request is a server-side request forgery waiting to
//! happen: in Lambda, `127.0.0.1:9001` is the Runtime API (whoever reaches it can take the next
//! invocation, another tenant's messages), `169.254.169.254` and `fd00:ec2::254` are the instance
//! metadata service, and in a VPC every private address is somebody's service. So, whatever the
//! caller asks:
//! - only public unicast addresses are connected to ([`taskq_core::callback::is_public`]),
//!   checked on the address actually connected to: IP literals (in every spelling the URL parser
//!   accepts: decimal, octal, hex, IPv4-mapped IPv6) before the request, host names in the
//!   resolver, whose answer is the list connected to (no window for DNS rebinding between a check
//!   and the connect);
//! - each redirect hop is checked the same way (or redirects are not followed at all);
//! - no proxy from the environment (a proxy would connect on our behalf, past the check);
//! - connect and total timeouts, and a cap on the response body read;
//! - a client that cannot be built is an error, never a default client without these rules.
//!
//! Loopback receivers can be allowed for local development ([`Network::AllowLoopback`],
//! `TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP=true` in taskq-local, for callbacks and
//! `webhook` tasks alike); it is off unless asked for, and the
//! template never sets it.

pub mod signature;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use taskq_core::callback::{is_loopback, is_public};
use url::{Host, Url};

/// Which addresses requests may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Public unicast addresses only (Lambda, and taskq-local unless told otherwise).
    PublicOnly,
    /// Also loopback: local receivers in development and tests.
    AllowLoopback,
    /// Public addresses and exactly these: a test receiver on one loopback address while the
    /// rest of loopback stays refused.
    PublicAnd(Vec<IpAddr>),
}

impl Network {
    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip)
            || match self {
                Network::PublicOnly => false,
                Network::AllowLoopback => is_loopback(ip),
                Network::PublicAnd(extra) => extra.contains(&ip),
            }
    }
}

/// How one client behaves.
#[derive(Debug, Clone)]
pub struct Policy {
    pub network: Network,
    /// Refuse `http://` URLs (and redirects to them).
    pub https_only: bool,
    /// Redirect hops followed, each checked like the first URL; 0: a 3xx is returned as is.
    pub max_redirects: usize,
    pub connect_timeout: Duration,
    /// From the start of the request to the end of the body read.
    pub total_timeout: Duration,
    /// Body bytes read at most; the rest is not read (the response says it was truncated).
    /// 0: the body is not read at all (the status is the answer), so a receiver that stalls
    /// after its status line cannot turn a success into a timeout.
    pub max_response_bytes: usize,
    pub user_agent: String,
}

impl Policy {
    /// Public addresses, http and https, up to 3 redirects, 5 s to connect, 30 s in all, 64 KiB
    /// of body.
    pub fn public(user_agent: impl Into<String>) -> Self {
        Self {
            network: Network::PublicOnly,
            https_only: false,
            max_redirects: 3,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
            user_agent: user_agent.into(),
        }
    }
}

/// Why a request was not made or did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The URL or a redirect leads somewhere requests may not go. Permanent.
    #[error("refused: {0}")]
    Refused(String),
    /// The request cannot be made as given (URL, method, header). Permanent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The client could not be built: a deployment fault, logged loudly by the caller.
    #[error("the outbound HTTP client could not be built: {0}")]
    Build(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connection refused or reset, TLS failure, and the like: may work later.
    #[error("{0}")]
    Transport(String),
}

impl OutboundError {
    /// Whether trying again could change the answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OutboundError::Timeout(_) | OutboundError::Transport(_) | OutboundError::Build(_)
        )
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// At most the policy's `max_response_bytes`.
    pub body: Vec<u8>,
    /// More body followed and was not read.
    pub truncated: bool,
}

/// Host name resolution. The system resolver in production; tests give names the answers they
/// need (a public-looking name that resolves to loopback).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A host name that resolved to no address requests may reach.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to no public address ({addrs})")]
struct ForbiddenAddress {
    host: String,
    addrs: String,
}

/// A redirect the policy refused.
#[derive(Debug, thiserror::Error)]
#[error("redirect refused: {0}")]
struct ForbiddenRedirect(String);

/// Resolves, then keeps only the addresses the network allows. reqwest connects to exactly the
/// addresses returned, so the check holds for the connection itself.
struct FilteringResolver {
    network: Network,
    lookup: Arc<dyn Lookup>,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let network = self.network.clone();
        let host = name.as_str().to_owned();
        let all = self.lookup.lookup(host.clone());
        Box::pin(async move {
            let all = all.await?;
            let allowed: Vec<SocketAddr> = all
                .iter()
                .filter(|ip| network.allows(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                let addrs = all.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
                return Err(Box::new(ForbiddenAddress { host, addrs }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The URL check made before connecting (first URL and every redirect): scheme, and IP literals,
/// which never reach the resolver.
fn check_url(url: &Url, network: &Network, https_only: bool) -> Result<(), OutboundError> {
    match url.scheme() {
        "https" => {}
        "http" if !https_only => {}
        "http" => return Err(OutboundError::Refused("only https:// URLs are allowed".into())),
        other => {
            return Err(OutboundError::Invalid(format!(
                "url: scheme {other:?} is not http or https"
            )))
        }
    }
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(OutboundError::Invalid("url: no host".into())),
    };
    if network.allows(ip) {
        Ok(())
    } else {
        Err(OutboundError::Refused(format!("{ip} is not a public address")))
    }
}

struct Inner {
    policy: Policy,
    lookup: Arc<dyn Lookup>,
    /// Built on first use: building loads the system trust roots (a few milliseconds of a cold
    /// start most invocations never need). A failure is kept and returned on every use.
    client: OnceLock<Result<reqwest::Client, OutboundError>>,
}

/// The guarded client. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl Outbound {
    /// A client whose connection pool and TLS set-up are made on first use.
    pub fn new(policy: Policy) -> Self {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    /// As [`Outbound::new`], resolving host names with `lookup`.
    pub fn with_lookup(policy: Policy, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                lookup,
                client: OnceLock::new(),
            }),
        }
    }

    /// Builds the client now: for processes whose every invocation uses it, so a build failure
    /// stops the start.
    pub fn eager(self) -> Result<Self, OutboundError> {
        self.client()?;
        Ok(self)
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    fn client(&self) -> Result<&reqwest::Client, OutboundError> {
        self.inner
            .client
            .get_or_init(|| build(&self.inner.policy, self.inner.lookup.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether `url` passes the checks made before connecting (scheme, IP literal). A host name
    /// passes here and is checked when it is resolved.
    pub fn check(&self, url: &str) -> Result<Url, OutboundError> {
        let url = Url::parse(url).map_err(|e| OutboundError::Invalid(format!("url: {e}")))?;
        let p = &self.inner.policy;
        check_url(&url, &p.network, p.https_only)?;
        Ok(url)
    }

    /// Sends `request` and reads its body up to the cap.
    pub async fn send(&self, request: Request) -> Result<Response, OutboundError> {
        let url = self.check(&request.url)?;
        let client = self.client()?;
        let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| OutboundError::Invalid(format!("method: {:?} is not an HTTP method", request.method)))?;
        let mut builder = client.request(method, url);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let cap = self.inner.policy.max_response_bytes;
        let mut body = Vec::new();
        let mut truncated = false;
        if cap == 0 {
            return Ok(Response {
                status,
                body,
                truncated,
            });
        }
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            let room = cap - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            body,
            truncated,
        })
    }
}

fn build(policy: &Policy, lookup: Arc<dyn Lookup>) -> Result<reqwest::Client, OutboundError> {
    let redirect = if policy.max_redirects == 0 {
        reqwest::redirect::Policy::none()
    } else {
        let max = policy.max_redirects;
        let network = policy.network.clone();
        let https_only = policy.https_only;
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max {
                return attempt.error(ForbiddenRedirect(format!("more than {max} redirects")));
            }
            match check_url(attempt.url(), &network, https_only) {
                Ok(()) => attempt.follow(),
                Err(why) => {
                    let why = format!("to {}: {why}", attempt.url());
                    attempt.error(ForbiddenRedirect(why))
                }
            }
        })
    };
    reqwest::Client::builder()
        .dns_resolver(FilteringResolver {
            network: policy.network.clone(),
            lookup,
        })
        .redirect(redirect)
        .no_proxy()
        .https_only(policy.https_only)
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.total_timeout)
        .user_agent(policy.user_agent.as_str())
        .build()
        .map_err(|e| OutboundError::Build(chain(&e)))
}

/// Which kind of failure a reqwest error is; refusals are found among its causes.
fn classify(e: reqwest::Error) -> OutboundError {
    let text = chain(&e);
    if caused_by::<ForbiddenAddress>(&e) || caused_by::<ForbiddenRedirect>(&e) {
        OutboundError::Refused(text)
    } else if e.is_builder() {
        OutboundError::Invalid(text)
    } else if e.is_timeout() {
        OutboundError::Timeout(text)
    } else {
        OutboundError::Transport(text)
    }
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its causes on one line (reqwest's own text alone says little: "error sending
/// request").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_are_checked_in_every_spelling() {
        let refused = [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0.0.0.0/",
            "http://0/",
            "http://[::]/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.1/",
            "http://172.16.0.1/",
            "http://192.168.0.1/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://[ff02::1]/",
            "http://240.0.0.1/",
            "http://255.255.255.255/",
            "http://[fe80::1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
        ];
        for url in refused {
            let parsed = Url::parse(url).unwrap();
            assert!(check_url(&parsed, &Network::PublicOnly, false).is_err(), "{url}");
        }
        for url in [
            "http://93.184.216.34/",
            "https://[2606:4700::1111]/",
            "https://example.com/",
        ] {
            assert!(
                check_url(&Url::parse(url).unwrap(), &Network::PublicOnly, false).is_ok(),
                "{url}"
            );
        }
        let https = Url::parse("http://example.com/").unwrap();
        assert!(check_url(&https, &Network::PublicOnly, true).is_err());
        let ftp = Url::parse("ftp://example.com/").unwrap();
        assert!(check_url(&ftp, &Network::PublicOnly, false).is_err());
    }

    #[test]
    fn networks() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!Network::PublicOnly.allows(lo));
        assert!(Network::AllowLoopback.allows(lo));
        assert!(!Network::AllowLoopback.allows("10.0.0.1".parse().unwrap()));
        assert!(Network::PublicAnd(vec![lo2]).allows(lo2));
        assert!(!Network::PublicAnd(vec![lo2]).allows(lo));
    }

    #[test]
    fn the_client_builds() {
        assert!(Outbound::new(Policy::public("t")).eager().is_ok());
    }
}
