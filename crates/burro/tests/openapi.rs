//! The OpenAPI document at `/api/openapi.json` against the router: every
//! route with its methods, and nothing the router lacks.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// Every route of the router with its methods, as the document spells them.
const ROUTES: &[(&str, &[&str])] = &[
    ("/api/jobs", &["get", "post"]),
    ("/api/jobs/{id}", &["get"]),
    ("/api/jobs/{id}/cancel", &["post"]),
    ("/api/jobs/{id}/retry", &["post"]),
    ("/api/jobs/{id}/logs", &["get"]),
    ("/api/jobs/{id}/events", &["get"]),
    ("/api/events", &["get"]),
    ("/api/stats", &["get"]),
    ("/api/nodes", &["get"]),
    ("/api/purge", &["post"]),
    ("/api/session", &["post"]),
    ("/api/openapi.json", &["get"]),
    ("/metrics", &["get"]),
    ("/health", &["get"]),
    ("/", &["get"]),
    ("/ui/app.js", &["get"]),
    ("/ui/style.css", &["get"]),
];

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn document(url: &str) -> Value {
    let response = reqwest::get(format!("{url}/api/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    response.json().await.expect("the document is JSON")
}

/// Collects every `$ref` value in the document.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_lists_every_route_with_its_methods() {
    let server = start(vec![]).await;
    let doc = document(&server.url()).await;
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3.0."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths is an object");

    let listed: BTreeSet<&str> = ROUTES.iter().map(|(path, _)| *path).collect();
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(documented, listed, "documented paths differ from the router's");

    for (path, methods) in ROUTES {
        let item = paths[*path].as_object().unwrap();
        let found: BTreeSet<&str> = item.keys().map(String::as_str).filter(|key| METHODS.contains(key)).collect();
        let expected: BTreeSet<&str> = methods.iter().copied().collect();
        assert_eq!(found, expected, "methods of {path}");
        for method in *methods {
            let responses = item[*method]["responses"].as_object();
            assert!(responses.is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        }
    }

    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    for target in targets {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {target}"));
        assert!(doc.pointer(pointer).is_some(), "$ref {target} resolves to nothing");
    }
}

/// Checks that each listed route serves its methods (no route-level 404 or
/// 405) and returns 405 for the methods it lacks, so the list matches the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_routes_match_the_router() {
    let server = start(vec![]).await;
    let client = reqwest::Client::new();
    for (path, methods) in ROUTES {
        let url = format!("{}{}", server.url(), path.replace("{id}", "no-such-job"));
        for method in ["get", "post", "put", "delete", "patch"] {
            let request = client.request(method.to_uppercase().parse().unwrap(), &url);
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // Read no body: the SSE route /api/events never ends.
            let code = if status == 200 || status == 204 {
                String::new()
            } else {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                body["error"]["code"].as_str().unwrap_or_default().to_string()
            };
            if methods.contains(&method) {
                assert_ne!(code, "not_found", "{method} {path}: {status}");
                assert_ne!(code, "method_not_allowed", "{method} {path}: {status}");
            } else {
                assert_eq!((status, code.as_str()), (405, "method_not_allowed"), "{method} {path}");
            }
        }
    }
}
