//! taskq-local serves the web dashboard at `/` and `/dashboard/*` without touching `/v1/*`.

use taskq_local::{start, LocalOptions};

#[tokio::test]
async fn the_dashboard_is_served_beside_an_unchanged_api() {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), "dash-secret");
    o.workers = false;
    o.sweep_every = None;
    let server = start(o).await.unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.base_url())).send();

    for path in ["/", "/dashboard", "/dashboard/", "/dashboard/index.html"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8", "{path}");
        let html = r.text().await.unwrap();
        assert!(html.contains(r#"<script src="/dashboard/app.js""#), "{path}");
        assert_eq!(html, include_str!("../../../dashboard/index.html"));
    }
    let r = get("/dashboard/app.js").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(r.text().await.unwrap().contains("/v1/admin/queues"));
    let r = get("/dashboard/style.css").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");

    // Unknown dashboard paths and every /v1 path behave as before: the API's problem+json.
    for path in ["/dashboard/nope.js", "/v1/nope", "/v1"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
    }
    let r = get("/v1/health").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/v1/tasks").await.unwrap();
    assert_eq!(r.status(), 401);
    // The dashboard routes answer GET only; other methods get the API's 405 problem.
    let r = http.post(format!("{}/", server.base_url())).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}
