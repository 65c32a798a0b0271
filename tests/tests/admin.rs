//! The admin API's guard and reads, on the real stack: a listener of its own that starts only with an admin key,
//! judges the TCP peer against the allowlist (forwarding headers count only from trusted proxies), wants a
//! valid `X-API-KEY`, lets viewers read only, and shows instances, routes, consumers and limits without ever
//! showing a key hash.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use serde_json::Value;
use tollgate_tests::admin::{ADMIN_KEY, VIEWER_KEY, admin_toml};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, http};

async fn start(extra_toml: String) -> Stack {
    Stack::start(StackOptions {
        extra_toml,
        quota_loop: false,
        consumer_toml: vec![(
            "team-a",
            "limit_count = { count = 600, time_window = \"1m\" }".to_owned(),
        )],
        ..StackOptions::default()
    })
    .await
}

struct Reply {
    status: u16,
    body: Value,
}

async fn call(stack: &Stack, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!(
        "{}{path}",
        stack.admin_url.as_deref().expect("the admin API is running")
    );
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http().request(method, url);
    for header in headers {
        request = request.insert_header(*header);
    }
    let mut response = request.send().await.expect("the admin API answers");
    let bytes = response.body().limit(1 << 20).await.expect("a body");
    Reply {
        status: response.status().as_u16(),
        body: serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    }
}

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    assert!(reply.body["error"]["message"].is_string(), "{}", reply.body);
    assert!(reply.body["error"]["type"].is_string(), "{}", reply.body);
}

#[actix_rt::test]
async fn without_an_admin_key_there_is_no_admin_listener() {
    let stack = start(String::new()).await;
    assert!(stack.admin_url.is_none());
    stack.stop().await;
}

#[actix_rt::test]
async fn every_request_needs_a_valid_admin_key_and_viewers_only_read() {
    let stack = start(admin_toml("")).await;
    let instances = "/admin/v1/instances";

    assert_refused(
        &call(&stack, "GET", instances, &[]).await,
        401,
        "missing_admin_key",
    );
    let wrong = call(&stack, "GET", instances, &[("X-API-KEY", "adm-guess")]).await;
    assert_refused(&wrong, 401, "invalid_admin_key");
    // A consumer key is not an admin key.
    let consumer = call(&stack, "GET", instances, &[("X-API-KEY", CONSUMERS[0].2)]).await;
    assert_refused(&consumer, 401, "invalid_admin_key");

    for key in [ADMIN_KEY, VIEWER_KEY] {
        let reply = call(&stack, "GET", instances, &[("X-API-KEY", key)]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["data"][0]["name"], "mock-openai");
    }

    // The role is checked before routing: a viewer's write is refused whether or not a route exists for it.
    for (method, path) in [
        ("POST", "/admin/v1/routes"),
        ("PUT", &format!("/admin/v1/routes/{MODEL}")),
        ("DELETE", "/admin/v1/consumers/team-a"),
        ("PUT", "/admin/v1/no-such-resource"),
    ] {
        let reply = call(&stack, method, path, &[("X-API-KEY", VIEWER_KEY)]).await;
        assert_refused(&reply, 403, "read_only_key");
    }
    // An admin key passes the guard; no write route exists yet.
    let reply = call(
        &stack,
        "PUT",
        "/admin/v1/no-such-resource",
        &[("X-API-KEY", ADMIN_KEY)],
    )
    .await;
    assert_refused(&reply, 404, "unknown_url");

    let metrics = stack.metrics.render();
    for line in [
        r#"tollgate_admin_requests_total{status="401",outcome="missing_admin_key"}"#,
        r#"tollgate_admin_requests_total{status="401",outcome="invalid_admin_key"}"#,
        r#"tollgate_admin_requests_total{status="403",outcome="read_only_key"}"#,
        r#"tollgate_admin_requests_total{status="200",outcome="ok"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn the_configuration_can_be_read_but_never_a_key_hash() {
    let stack = start(admin_toml("")).await;
    let get = |path: String| {
        let stack = &stack;
        async move { call(stack, "GET", &path, &[("X-API-KEY", VIEWER_KEY)]).await }
    };

    let instance = get("/admin/v1/instances/mock-openai".into()).await;
    assert_eq!(instance.status, 200, "{}", instance.body);
    assert_eq!(instance.body["provider"], "openai");
    assert_eq!(instance.body["timeout"], "5s");
    // The provider key is named by its environment variable, never shown.
    assert_eq!(instance.body["api_key_env"], "PROVIDER_KEY");
    assert!(
        !instance
            .body
            .to_string()
            .contains(tollgate_tests::stack::PROVIDER_KEY)
    );

    let routes = get("/admin/v1/routes".into()).await;
    assert_eq!(routes.body["data"][0]["name"], MODEL, "{}", routes.body);
    let route = get(format!("/admin/v1/routes/{MODEL}")).await;
    assert_eq!(
        route.body["targets"][0]["instance"], "mock-openai",
        "{}",
        route.body
    );
    assert_eq!(route.body["targets"][0]["weight"], 1);
    assert_eq!(route.body["balancer"], "weighted_round_robin");

    let consumers = get("/admin/v1/consumers".into()).await;
    let names: Vec<&str> = consumers.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a", "team-b", "team-c"]);
    let team_a = get("/admin/v1/consumers/team-a".into()).await;
    assert_eq!(team_a.body["keys"][0]["id"], CONSUMERS[0].1, "{}", team_a.body);
    for body in [&consumers.body, &team_a.body] {
        let text = body.to_string();
        let hash = hex::encode(tollgate_gateway::admission::auth::hash_key(
            CONSUMERS[0].2.as_bytes(),
        ));
        assert!(!text.contains("sha256") && !text.contains(&hash), "{text}");
    }

    assert_eq!(team_a.body["limit_count"]["count"], 600);
    assert_eq!(team_a.body["limit_count"]["time_window"], "1m");
    let limits = get("/admin/v1/limits".into()).await;
    assert_eq!(limits.status, 200, "{}", limits.body);
    assert_eq!(
        limits.body["data"],
        serde_json::json!([]),
        "no [[token_limits]] configured"
    );

    for path in [
        "/admin/v1/instances/nowhere",
        "/admin/v1/routes/nowhere",
        "/admin/v1/consumers/nobody",
        "/admin/v1/prices/nothing@2026-01-01",
    ] {
        assert_refused(&get(path.into()).await, 404, "not_found");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn a_peer_outside_the_allowlist_is_refused_whatever_it_forwards() {
    // The test connects from 127.0.0.1, outside 10.0.0.0/8, and 127.0.0.1 is not a trusted proxy.
    let stack = start(admin_toml(r#"allow = ["10.0.0.0/8"]"#)).await;
    let path = "/admin/v1/instances";
    let key = ("X-API-KEY", ADMIN_KEY);
    for spoof in [
        vec![key],
        vec![key, ("X-Real-IP", "10.1.2.3")],
        vec![key, ("X-Forwarded-For", "10.1.2.3")],
        vec![key, ("X-Forwarded-For", "10.1.2.3"), ("X-Real-IP", "10.1.2.3")],
    ] {
        let reply = call(&stack, "GET", path, &spoof).await;
        assert_refused(&reply, 403, "address_not_allowed");
    }
    // The address is judged before the key: no key is no different.
    assert_refused(&call(&stack, "GET", path, &[]).await, 403, "address_not_allowed");
    stack.stop().await;
}

#[actix_rt::test]
async fn a_trusted_proxy_forwards_the_client_address() {
    let stack = start(admin_toml(
        "allow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    ))
    .await;
    let path = "/admin/v1/routes";
    let key = ("X-API-KEY", ADMIN_KEY);

    let forwarded = call(&stack, "GET", path, &[key, ("X-Forwarded-For", "10.1.2.3")]).await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    let real_ip = call(&stack, "GET", path, &[key, ("X-Real-IP", "10.1.2.3")]).await;
    assert_eq!(real_ip.status, 200, "{}", real_ip.body);

    // The proxy itself (127.0.0.1) is not in the allowlist.
    assert_refused(
        &call(&stack, "GET", path, &[key]).await,
        403,
        "address_not_allowed",
    );
    // The rightmost hop the proxy did not vouch for is the client; what the client prepended proves nothing.
    let prepended = call(
        &stack,
        "GET",
        path,
        &[key, ("X-Forwarded-For", "10.1.2.3, 203.0.113.9")],
    )
    .await;
    assert_refused(&prepended, 403, "address_not_allowed");
    let garbage = call(&stack, "GET", path, &[key, ("X-Forwarded-For", "10.1.2.3, x")]).await;
    assert_refused(&garbage, 403, "bad_forwarded_address");
    stack.stop().await;
}
