//! The dashboard's embedded files over HTTP.

mod common;

use common::*;

/// Fetches `path` and returns its status, content type, cache control and body.
async fn fetch(url: &str) -> (u16, String, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, content_type, cache_control) = (response.status().as_u16(), header("content-type"), header("cache-control"));
    (status, content_type, cache_control, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_have_content_types() {
    let server = start(vec![]).await;
    let cases = [
        ("/", "text/html; charset=utf-8", "<!doctype html>"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "\"use strict\";"),
        ("/ui/style.css", "text/css; charset=utf-8", ":root"),
    ];
    for (path, expected_type, expected_text) in cases {
        let (status, content_type, cache_control, body) = fetch(&format!("{}{path}", server.url())).await;
        assert_eq!(status, 200, "GET {path}");
        assert_eq!(content_type, expected_type, "content type of {path}");
        assert_eq!(cache_control, "no-cache", "cache control of {path}");
        assert!(body.contains(expected_text), "GET {path} returned an unexpected body: {}", &body[..body.len().min(200)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_links_served_assets() {
    let server = start(vec![]).await;
    let (_, _, _, page) = fetch(&format!("{}/", server.url())).await;
    for asset in ["/ui/app.js", "/ui/style.css"] {
        assert!(page.contains(&format!("\"{asset}\"")), "index.html does not reference {asset}");
    }
    let (status, _, _, body) = fetch(&format!("{}/ui/missing.js", server.url())).await;
    assert_eq!(status, 404, "an unknown asset is not found: {body}");
}
