//! Property tests: route matching, group names, tokens and claims, `hello` parsing and
//! publish bodies never panic, whatever the input, and keep their promises.

mod support;

use std::time::Duration;

use herald::auth::{self, Authenticator, Claims, Refusal};
use herald::config::{AuthMode, RouteConfig};
use herald::protocol::{parse_client_frame, parse_hello};
use herald::route::Route;
use herald_core::GroupName;
use proptest::prelude::*;
use serde_json::{Value, json};

const SECRET: &[u8] = b"props-secret-props-secret-props-secret";

fn route(path: &str, groups: Vec<String>) -> Option<Route> {
    Route::compile(&RouteConfig {
        path: path.to_string(),
        groups,
        auth: AuthMode::Token,
        sub_param: None,
        hook_groups: Vec::new(),
        presence: false,
        origins: Vec::new(),
    })
    .ok()
}

/// Path patterns mixing literals, parameters and junk.
fn pattern() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[a-z]{1,6}",
        "\\{[a-z_]{1,4}\\}",
        "[^/]{0,5}",
        Just(String::new()),
    ];
    prop::collection::vec(segment, 0..5).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// Request paths: near misses of the patterns above, traversal and encodings.
fn request_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[a-z0-9]{1,6}",
        "[A-Za-z0-9._-]{0,120}",
        Just("..".to_string()),
        Just(".".to_string()),
        "%[0-9A-Fa-f]{2}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(segment, 0..6).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
        "[a-z.]{1,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("group".to_string()),
                    Just("groups".to_string()),
                    Just("text".to_string()),
                    Just("data".to_string()),
                    Just("bytes".to_string()),
                    Just("messages".to_string()),
                    Just("t".to_string()),
                    Just("v".to_string()),
                    Just("streams".to_string()),
                    Just("o".to_string()),
                    Just("e".to_string()),
                    Just("token".to_string()),
                    "[a-z]{1,4}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn routes_compile_and_match_without_panicking(
        path in pattern(),
        groups in prop::collection::vec("[a-z.{}_]{0,12}", 0..4),
        requests in prop::collection::vec(request_path(), 1..8),
    ) {
        if let Some(r) = route(&path, groups) {
            for request in &requests {
                if let Some(m) = r.matches(request) {
                    // Every matched value is a plain name: no encodings, no dot-segments.
                    for v in &m.values {
                        prop_assert!(!v.is_empty() && v != "." && v != "..");
                        prop_assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                    }
                    let _ = r.groups_for(&m.values);
                }
            }
        }
    }

    #[test]
    fn seed_route_matches_exactly_its_shape(id in "\\PC{0,20}", tail in "\\PC{0,5}") {
        let r = route("/message/{user_id}/stream/", vec!["user.{user_id}".into()]).unwrap();
        let path = format!("/message/{id}/stream/{tail}");
        let valid_id = !id.is_empty() && id != "." && id != ".."
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(r.matches(&path).is_some(), valid_id && tail.is_empty());
    }

    #[test]
    fn group_names_follow_the_channels_rule(name in prop_oneof!["\\PC{0,120}", "[A-Za-z0-9._-]{0,120}"]) {
        let valid = (1..=99).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(GroupName::new(&name).is_ok(), valid);
    }

    #[test]
    fn arbitrary_tokens_are_refused_without_panicking(
        token in prop_oneof![
            "\\PC{0,300}",
            "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}",
            "eyJ[A-Za-z0-9_-]{0,60}\\.eyJ[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}",
        ],
    ) {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        prop_assert!(auth.verify(&token).is_err());
    }

    #[test]
    fn signed_claims_of_any_shape_never_panic(
        sub in json_value(),
        exp in prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            json_value(),
        ],
        groups in json_value(),
        nbf in json_value(),
        drop_sub in any::<bool>(),
    ) {
        let mut claims = json!({"sub": sub, "exp": exp, "groups": groups, "nbf": nbf});
        if drop_sub {
            claims.as_object_mut().unwrap().remove("sub");
        }
        // First: it installs herald's crypto provider, which signing below goes through.
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::from_secs(5));
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        );
        if let Ok(token) = token {
            let r = route("/message/{user_id}/stream/", vec!["user.{user_id}".into()]).unwrap();
            let g = vec![GroupName::new("user.42").unwrap()];
            let _ = auth.authorize(Some(&token), &r, &["42".into()], &g);
        }
    }

    #[test]
    fn the_default_grant_binds_sub(sub in "[A-Za-z0-9._-]{1,20}", other in "[A-Za-z0-9._-]{1,20}") {
        prop_assume!(sub != "." && sub != ".." && other != "." && other != "..");
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        let r = route("/message/{user_id}/stream/", vec!["user.{user_id}".into()]).unwrap();
        let token = auth::mint(SECRET, &sub, None, Duration::from_secs(60)).unwrap();
        let groups_for = |id: &str| r.groups_for(&[id.to_string()]).unwrap();
        prop_assert!(auth.authorize(Some(&token), &r, std::slice::from_ref(&sub), &groups_for(&sub)).is_ok());
        if other != sub {
            prop_assert_eq!(
                auth.authorize(Some(&token), &r, std::slice::from_ref(&other), &groups_for(&other)),
                Err(Refusal::Forbidden)
            );
        }
    }

    #[test]
    fn group_patterns_never_panic_and_never_widen(
        patterns in prop::collection::vec("[a-z.*]{0,10}", 0..5),
        group in "[a-z.]{1,12}",
    ) {
        let claims = Claims { sub: "x".into(), exp: 0, nbf: None, groups: Some(patterns.clone()) };
        let r = route("/message/{user_id}/stream/", vec!["user.{user_id}".into()]).unwrap();
        if let Ok(g) = GroupName::new(&group) {
            let granted = auth::grants(&claims, &r, &["x".into()], std::slice::from_ref(&g));
            let expected = patterns.iter().any(|p| {
                p == "*" || p == &group
                    || p.strip_suffix(".*").is_some_and(|prefix| {
                        group.len() > prefix.len() + 1 && group.starts_with(&format!("{prefix}."))
                    })
            });
            prop_assert_eq!(granted, expected);
        }
    }

    #[test]
    fn hello_parsing_never_panics(
        text in prop_oneof![
            "\\PC{0,200}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..200),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            json_value().prop_map(|v| json!({"t": "hello", "v": 1, "streams": v, "token": "x"}).to_string().into_bytes()),
        ],
    ) {
        if let Ok(hello) = parse_hello(&text) {
            // Only valid group names survive.
            for name in hello.streams.keys() {
                prop_assert!(GroupName::new(name).is_ok());
            }
        }
        let _ = parse_client_frame(&text);
    }

    #[test]
    fn json_helpers_never_panic(raw in "\\PC{0,200}") {
        let _ = herald::api::minify_json(&raw);
        let _ = herald::api::json_depth(&raw);
    }
}

/// Publish bodies go through the real server: whatever the body, the answer is 200 or a
/// 4xx JSON error — never a dropped connection or a 5xx — and the server keeps serving.
#[test]
fn publish_bodies_always_get_an_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(support::TestServer::start());
    let addr = server.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        // A plain `#[test]` has no source file for proptest to record failures next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| json!({"group": "user.p", "data": v})
            .to_string()
            .into_bytes()),
        json_value().prop_map(|v| json!({"messages": [v]}).to_string().into_bytes()),
        json_value().prop_map(|v| json!({"groups": v, "text": "x"}).to_string().into_bytes()),
        json_value().prop_map(|v| json!({"group": "user.p", "bytes": v})
            .to_string()
            .into_bytes()),
        prop::collection::vec(any::<u8>(), 0..300),
        "\\PC{0,300}".prop_map(String::into_bytes),
    ];
    runner
        .run(&body, |body| {
            let (status, text) = runtime.block_on(support::http(
                addr,
                "POST",
                "/api/publish",
                &[("Content-Type", "application/json")],
                &body,
            ));
            prop_assert!(
                status == 200 || (400..500).contains(&status),
                "status {} for {:?}: {}",
                status,
                String::from_utf8_lossy(&body),
                text
            );
            if status != 200 {
                let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                prop_assert!(error["error"].is_string(), "error body {}", text);
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(server.stop());
}

/// Request heads of any shape go through the real server: each gets a status line (an
/// error status with a JSON body) or, for what is not HTTP/1.1 at all, a closed
/// connection; and the server keeps serving after every one.
#[test]
fn request_heads_of_any_shape_get_an_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut config = herald::Config::default();
    config.limits.handshake_timeout = Duration::from_secs(1);
    config.limits.body_timeout = Duration::from_secs(1);
    let server = runtime.block_on(support::TestServer::with_config(config));
    let addr = server.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("OPTIONS".to_string()),
        "[A-Z]{1,10}",
        "\\PC{0,8}",
    ];
    let target = prop_oneof![
        Just("/message/1/stream/".to_string()),
        Just("/api/publish".to_string()),
        Just("/healthz".to_string()),
        request_path(),
        "[ -~]{0,300}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1".to_string()),
        Just("HTTP/1.0".to_string()),
        "HTTP/[0-9]\\.[0-9]",
        "[ -~]{0,10}",
    ];
    let header = prop_oneof![
        Just("Upgrade: websocket".to_string()),
        Just("Connection: Upgrade".to_string()),
        Just("Sec-WebSocket-Version: 13".to_string()),
        Just("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        Just("Host: x".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        "Content-Length: [0-9-]{0,6}",
        "[A-Za-z-]{1,12}: [ -~]{0,40}",
        "[ -~]{0,40}",
    ];
    let head = (
        method,
        target,
        version,
        prop::collection::vec(header, 0..12),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    runner
        .run(&head, |(method, target, version, headers, body)| {
            let mut request = format!("{method} {target} {version}\r\n");
            for h in &headers {
                request.push_str(h);
                request.push_str("\r\n");
            }
            request.push_str("Connection: close\r\n\r\n");
            let mut bytes = request.into_bytes();
            bytes.extend_from_slice(&body);
            let (status, text) = runtime.block_on(support::raw_http(addr, &bytes));
            prop_assert!(
                status == 0 || (100..600).contains(&status),
                "status {} for {:?}",
                status,
                String::from_utf8_lossy(&bytes)
            );
            if status >= 400 {
                // The first answer's body only: a generated empty header line ends the
                // head early, and what follows it is a second request with its own answer.
                let error: Value = serde_json::Deserializer::from_str(&text)
                    .into_iter::<Value>()
                    .next()
                    .and_then(Result::ok)
                    .unwrap_or(Value::Null);
                prop_assert!(
                    error["error"].is_string(),
                    "status {} without a JSON error body ({:?}) for {:?}",
                    status,
                    text,
                    String::from_utf8_lossy(&bytes)
                );
            }
            let health = runtime.block_on(support::get_status(addr, "/healthz"));
            prop_assert_eq!(health, 200);
            Ok(())
        })
        .unwrap();
    runtime.block_on(server.stop());
}

/// `hello` frames of any shape through the real server: a `welcome` or a close with
/// 4500 (never a crash, a hang or another code), and the server keeps serving.
#[test]
fn hellos_of_any_shape_get_a_welcome_or_4500() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(support::TestServer::start());
    let url = server.ws_url("/message/1/stream/");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 100,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let hello = prop_oneof![
        "\\PC{0,200}",
        json_value().prop_map(|v| v.to_string()),
        json_value().prop_map(|v| json!({"t": "hello", "v": 1, "streams": v}).to_string()),
        json_value().prop_map(|v| json!({"t": "hello", "v": v, "streams": {}}).to_string()),
        (json_value(), "[a-z.0-9]{1,20}")
            .prop_map(|(v, g)| { json!({"t": "hello", "v": 1, "streams": {g: v}}).to_string() }),
    ];
    runner
        .run(&hello, |hello| {
            let outcome = runtime.block_on(async {
                let mut ws = support::WsClient::connect_with(&url, &["herald.v1"])
                    .await
                    .expect("connect");
                ws.send_text(&hello).await.expect("send hello");
                match ws.recv_within(Duration::from_secs(5)).await {
                    Ok(Some(support::Received::Text(t))) => {
                        let header = t.lines().next().unwrap_or("");
                        let header: Value = serde_json::from_str(header).unwrap_or(Value::Null);
                        if header["t"] == "welcome" {
                            Ok(())
                        } else {
                            Err(format!("unexpected first frame {t:?}"))
                        }
                    }
                    Ok(Some(support::Received::Closed(4500))) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            prop_assert!(outcome.is_ok(), "{:?} for hello {:?}", outcome, hello);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        runtime.block_on(support::get_status(server.addr, "/healthz")),
        200
    );
    runtime.block_on(server.stop());
}
