//! The admin API (issue 5) against a real Postgres and the real API on loopback: auth,
//! the five resources, webhook logs (list, stats, detail, retry, delete) and jobs.

use std::collections::HashMap;

use crate::common::*;
use serde_json::{Value, json};

struct Admin<'a> {
    app: &'a TestApp,
}

impl Admin<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base)
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        json(
            self.app
                .http
                .get(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        json(
            self.app
                .http
                .delete(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        json(
            self.app
                .http
                .post(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        json(
            self.app
                .http
                .patch(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

fn assert_error(status: u16, v: &Value, want: u16) {
    assert_eq!(status, want, "{v}");
    assert!(
        v["error"].is_string() && v["detail"].is_string(),
        "JSON error body expected, got {v}"
    );
}

#[tokio::test]
async fn admin_routes_answer_401_without_the_right_token() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    for path in [
        "/api/webhook-logs",
        "/api/webhook-logs/stats",
        "/api/users",
        "/api/tasks/1",
    ] {
        let (s, v) = json(
            app.http
                .get(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(s, &v, 401);
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth("wrong-token")
            .send()
            .await
            .unwrap();
        let (s, v) = json(r).await;
        assert_error(s, &v, 401);
    }
    app.stop().await;

    // No token configured: everyone gets 401, whatever they send.
    let env = HashMap::from([("HOOKQ_ADMIN_TOKEN".to_string(), String::new())]);
    let app = spawn_app(Options {
        env,
        worker: false,
        ..Options::default()
    })
    .await;
    let r = app
        .http
        .get(format!("{}/api/users", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (s, v) = json(r).await;
    assert_error(s, &v, 401);
    assert!(
        v["detail"].as_str().unwrap().contains("not configured"),
        "{v}"
    );
    app.stop().await;
}

#[tokio::test]
async fn resources_crud_with_conflicts_references_and_write_only_secrets() {
    let app = spawn_app(Options {
        worker: false,
        demo: false,
        ..Options::default()
    })
    .await;
    let a = Admin { app: &app };

    // Users: create, duplicate, get, patch, list.
    let (s, user) = a
        .post("/api/users", json!({"external_id": "u1", "name": "Ana"}))
        .await;
    assert_eq!(s, 201, "{user}");
    let uid = user["id"].as_str().unwrap().to_string();
    let (s, v) = a.post("/api/users", json!({"external_id": "u1"})).await;
    assert_error(s, &v, 409);
    let (s, v) = a
        .patch(&format!("/api/users/{uid}"), json!({"name": "Ana B"}))
        .await;
    assert_eq!(
        (s, v["name"].as_str(), v["external_id"].as_str()),
        (200, Some("Ana B"), Some("u1"))
    );
    let (s, page) = a.get("/api/users?limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            page["total"].as_i64(),
            page["limit"].as_i64(),
            page["offset"].as_i64()
        ),
        (Some(1), Some(10), Some(0))
    );
    assert_eq!(page["items"][0]["id"], user["id"]);

    // Templates and personas: unknown references are 422.
    let (s, tpl) = a
        .post(
            "/api/persona-templates",
            json!({"name": "t", "reply_template": "Hi {sender_name}"}),
        )
        .await;
    assert_eq!(s, 201, "{tpl}");
    let missing = "00000000-0000-0000-0000-000000000000";
    let (s, v) = a
        .post(
            "/api/personas",
            json!({"external_id": "p1", "user_id": missing, "template_id": tpl["id"], "name": "P"}),
        )
        .await;
    assert_error(s, &v, 422);
    let (s, persona) = a
        .post(
            "/api/personas",
            json!({"external_id": "p1", "user_id": uid, "template_id": tpl["id"], "name": "P", "blocklist": ["scam"]}),
        )
        .await;
    assert_eq!(s, 201, "{persona}");
    assert_eq!(persona["blocklist"], json!(["scam"]));

    // Integrations: invalid enum values are 422, secrets are write-only.
    let (s, v) = a
        .post(
            "/api/integrations",
            json!({"user_id": uid, "platform": "myspace", "account_id": "1"}),
        )
        .await;
    assert_error(s, &v, 422);
    let (s, v) = a
        .post("/api/integrations", json!({"user_id": uid, "platform": "instagram", "account_id": "1", "reply_delivery": "pigeon"}))
        .await;
    assert_error(s, &v, 422);
    let (s, v) = a
        .post(
            "/api/integrations",
            json!({"user_id": missing, "platform": "instagram", "account_id": "1"}),
        )
        .await;
    assert_error(s, &v, 422);
    let secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5";
    let (s, integ) = a
        .post(
            "/api/integrations",
            json!({"user_id": uid, "platform": "instagram", "account_id": "acc-1", "access_token": "EAAG-super-secret",
                   "reply_delivery": "callback", "callback_url": "https://example.com/hook", "callback_secret": secret,
                   "default_persona_id": persona["id"]}),
        )
        .await;
    assert_eq!(s, 201, "{integ}");
    assert_eq!(
        (
            integ["has_access_token"].as_bool(),
            integ["has_callback_secret"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let iid = integ["id"].as_str().unwrap().to_string();
    for body in [
        integ.to_string(),
        a.get(&format!("/api/integrations/{iid}"))
            .await
            .1
            .to_string(),
        a.get("/api/integrations").await.1.to_string(),
    ] {
        assert!(
            !body.contains("EAAG-super-secret") && !body.contains(secret),
            "secret leaked: {body}"
        );
        assert!(
            !body.contains("\"access_token\"") && !body.contains("\"callback_secret\""),
            "{body}"
        );
    }
    let (s, v) = a
        .post(
            "/api/integrations",
            json!({"user_id": uid, "platform": "instagram", "account_id": "acc-1"}),
        )
        .await;
    assert_error(s, &v, 409);
    // PATCH: null clears a nullable field; callback delivery without a URL is refused.
    let (s, v) = a
        .patch(
            &format!("/api/integrations/{iid}"),
            json!({"access_token": null}),
        )
        .await;
    assert_eq!(
        (s, v["has_access_token"].as_bool()),
        (200, Some(false)),
        "{v}"
    );
    let (s, v) = a
        .patch(
            &format!("/api/integrations/{iid}"),
            json!({"callback_url": null}),
        )
        .await;
    assert_error(s, &v, 422);
    let (s, v) = a
        .patch(
            &format!("/api/integrations/{iid}"),
            json!({"reply_delivery": "none", "callback_url": null}),
        )
        .await;
    // An unset field is present as `null` (declared nullable), never left out.
    assert_eq!((s, v.get("callback_url")), (200, Some(&Value::Null)), "{v}");

    // Posts: unique per integration.
    let (s, post) = a
        .post(
            "/api/posts",
            json!({"external_id": "m1", "integration_id": iid}),
        )
        .await;
    assert_eq!(
        (
            s,
            post["replies_enabled"].as_bool(),
            post.get("persona_id") == Some(&Value::Null)
        ),
        (201, Some(true), true),
        "{post}"
    );
    let (s, v) = a
        .post(
            "/api/posts",
            json!({"external_id": "m1", "integration_id": iid}),
        )
        .await;
    assert_error(s, &v, 409);
    let (s, v) = a
        .post(
            "/api/posts",
            json!({"external_id": "m2", "integration_id": missing}),
        )
        .await;
    assert_error(s, &v, 422);
    let pid = post["id"].as_str().unwrap();
    let (s, v) = a
        .patch(
            &format!("/api/posts/{pid}"),
            json!({"replies_enabled": false, "persona_id": persona["id"]}),
        )
        .await;
    assert_eq!(
        (s, v["replies_enabled"].as_bool()),
        (200, Some(false)),
        "{v}"
    );

    // A template in use cannot go; unknown ids are 404; deletes cascade as documented.
    let (s, v) = a
        .delete(&format!(
            "/api/persona-templates/{}",
            tpl["id"].as_str().unwrap()
        ))
        .await;
    assert_error(s, &v, 409);
    let (s, v) = a.get(&format!("/api/users/{missing}")).await;
    assert_error(s, &v, 404);
    let (s, v) = a
        .patch(&format!("/api/posts/{missing}"), json!({"caption": "x"}))
        .await;
    assert_error(s, &v, 404);
    let (s, _) = a.delete(&format!("/api/users/{uid}")).await;
    assert_eq!(s, 200);
    let (s, v) = a.get(&format!("/api/integrations/{iid}")).await;
    assert_error(s, &v, 404);
    let (s, v) = a.delete(&format!("/api/users/{uid}")).await;
    assert_error(s, &v, 404);
    app.stop().await;
}

#[tokio::test]
async fn logs_list_filter_stats_detail_retry_and_delete() {
    let app = spawn_app(Options::default()).await;
    let a = Admin { app: &app };

    // One reply, one dead letter (persona 'ghost' does not exist yet).
    let (_, ok) = json(app.post_instagram(&compact("ok_1", "Love it")).await).await;
    let ok_id = ok["ids"][0].as_i64().unwrap();
    let ghost = compact("dl_1", "hello")
        .replace("\"persona_123\"", "\"ghost\"")
        .replace("\"post_123\"", "\"post_x\"");
    let (_, dl) = json(app.post_instagram(&ghost).await).await;
    let dl_id = dl["ids"][0].as_i64().unwrap();
    app.wait_status(ok_id, "processed").await;
    app.wait_status(dl_id, "dead_letter").await;

    let (s, page) = a.get("/api/webhook-logs").await;
    assert_eq!((s, page["total"].as_i64()), (200, Some(2)), "{page}");
    assert_eq!(page["items"][0]["id"].as_i64(), Some(dl_id), "newest first");
    assert!(
        page["items"][0].get("payload").is_none(),
        "lists leave the payload out"
    );
    let (_, page) = a.get("/api/webhook-logs?status=dead_letter").await;
    assert_eq!(page["total"].as_i64(), Some(1));
    assert_eq!(page["items"][0]["id"].as_i64(), Some(dl_id));
    let (_, page) = a
        .get("/api/webhook-logs?event_type=comment&source=instagram&limit=1&offset=1")
        .await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    let (_, page) = a.get("/api/webhook-logs?since=2999-01-01T00:00:00Z").await;
    assert_eq!(page["total"].as_i64(), Some(0));
    let (_, page) = a
        .get("/api/webhook-logs?until=2999-01-01T00:00:00Z&status=processed")
        .await;
    assert_eq!(page["items"][0]["id"].as_i64(), Some(ok_id));
    let (s, v) = a.get("/api/webhook-logs?status=bogus").await;
    assert_error(s, &v, 422);
    let (s, v) = a.get("/api/webhook-logs?since=yesterday").await;
    assert_error(s, &v, 400);

    let (s, st) = a.get("/api/webhook-logs/stats").await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        (
            st["total"].as_i64(),
            st["by_status"]["processed"].as_i64(),
            st["by_status"]["dead_letter"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(
        st["by_event_type"][0],
        json!({"name": "comment", "count": 2})
    );
    assert_eq!(st["success_rate"].as_f64(), Some(0.5));
    assert_eq!(st["processing_time"]["processed"].as_i64(), Some(1));
    assert!(st["processing_time"]["p95_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(st["last_minute"]["received"].as_i64(), Some(2));
    assert_eq!(st["queue"]["depth"].as_i64(), Some(0));
    let (s, chart) = a.get("/api/webhook-logs/throughput?minutes=5").await;
    assert_eq!(s, 200);
    let chart = chart.as_array().unwrap();
    assert_eq!(chart.len(), 5);
    assert_eq!(
        chart
            .iter()
            .map(|m| m["received"].as_i64().unwrap())
            .sum::<i64>(),
        2
    );

    // Detail: payload, error, and the job with its runs.
    let (s, d) = a.get(&format!("/api/webhook-logs/{dl_id}")).await;
    assert_eq!(s, 200, "{d}");
    assert!(
        d["error_message"]
            .as_str()
            .unwrap()
            .contains("persona 'ghost' not found")
    );
    assert_eq!(d["payload"]["persona_id"], "ghost");
    assert_eq!(d["job"]["status"], "dead");
    let job_id = d["job_id"].as_i64().unwrap();
    let (s, job) = a.get(&format!("/api/tasks/{job_id}")).await;
    assert_eq!(
        (s, job["task_name"].as_str(), job["status"].as_str()),
        (200, Some("process_webhook"), Some("dead"))
    );
    let (s, v) = a.get("/api/tasks/999999999").await;
    assert_error(s, &v, 404);

    // Retry: 409 for a processed log, 404 for none; a dead letter gets a new job and,
    // once the persona exists, a reply.
    let (s, v) = a
        .post(&format!("/api/webhook-logs/{ok_id}/retry"), json!({}))
        .await;
    assert_error(s, &v, 409);
    let (s, v) = a.post("/api/webhook-logs/999999/retry", json!({})).await;
    assert_error(s, &v, 404);
    let (_, users) = a.get("/api/users").await;
    let (_, tpls) = a.get("/api/persona-templates").await;
    let (s, _) = a
        .post(
            "/api/personas",
            json!({"external_id": "ghost", "user_id": users["items"][0]["id"], "template_id": tpls["items"][0]["id"], "name": "Ghost"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, r) = a
        .post(&format!("/api/webhook-logs/{dl_id}/retry"), json!({}))
        .await;
    assert_eq!((s, r["retried"].as_i64()), (200, Some(1)), "{r}");
    let row = app.wait_status(dl_id, "processed").await;
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));
    assert_ne!(row.job_id, Some(job_id), "a new job");

    // Retry all matching a filter: two new dead letters, one call.
    let mut ids = Vec::new();
    for c in ["dl_2", "dl_3"] {
        let body = compact(c, "hi")
            .replace("\"persona_123\"", "\"phantom\"")
            .replace("\"post_123\"", "\"post_x\"");
        let (_, ack) = json(app.post_instagram(&body).await).await;
        ids.push(ack["ids"][0].as_i64().unwrap());
    }
    for &id in &ids {
        app.wait_status(id, "dead_letter").await;
    }
    let (s, v) = a
        .post("/api/webhook-logs/retry", json!({"status": "processed"}))
        .await;
    assert_error(s, &v, 422);
    let (s, r) = a
        .post(
            "/api/webhook-logs/retry",
            json!({"status": "dead_letter", "event_type": "comment"}),
        )
        .await;
    assert_eq!((s, r["retried"].as_i64()), (200, Some(2)), "{r}");
    let mut got: Vec<i64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ids);
    for &id in &ids {
        let row = app.wait_status(id, "dead_letter").await;
        assert_eq!(row.attempts, 1, "run again by the new job");
    }

    // Delete.
    let (s, _) = a.delete(&format!("/api/webhook-logs/{ok_id}")).await;
    assert_eq!(s, 200);
    let (s, v) = a.get(&format!("/api/webhook-logs/{ok_id}")).await;
    assert_error(s, &v, 404);
    let (s, v) = a.delete(&format!("/api/webhook-logs/{ok_id}")).await;
    assert_error(s, &v, 404);
    app.stop().await;
}

/// Every admin route that takes a JSON body, sent none or a body that is not JSON
/// (schemathesis 4 sends both), answers a status its operation documents (415), with the
/// JSON error body.
#[tokio::test]
async fn a_missing_or_non_json_body_gets_a_documented_status() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let doc: Value = serde_json::from_str(&hookq_api::openapi_json()).unwrap();
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["requestBody"]["content"]["application/json; charset=utf-8"].is_null()
                || !path.starts_with("/api/")
            {
                continue;
            }
            // Path parameters: any well-formed value (the body is refused first).
            let mut url = path.clone();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let value = match p["schema"]["type"].as_str() {
                    Some("integer") => "1",
                    _ => "00000000-0000-0000-0000-000000000000",
                };
                url = url.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), value);
            }
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            for text_body in [false, true] {
                let mut req = app
                    .http
                    .request(method.clone(), format!("{}{url}", app.base))
                    .bearer_auth(ADMIN_TOKEN);
                if text_body {
                    req = req.header("Content-Type", "text/plain").body("not json");
                }
                let (status, v) = json(req.send().await.unwrap()).await;
                let what = format!(
                    "{method} {path} with {}",
                    if text_body { "a text body" } else { "no body" }
                );
                assert!(
                    op["responses"][status.to_string()].is_object(),
                    "{what}: {status} is not documented ({v})"
                );
                assert_error(status, &v, 415);
                tried += 1;
            }
        }
    }
    assert!(
        tried >= 20,
        "only {tried} requests: routes with a JSON body not found"
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_declares_the_bearer_scheme_on_admin_routes() {
    let v: Value = serde_json::from_str(&hookq_api::openapi_json()).unwrap();
    let scheme = &v["components"]["securitySchemes"]["AdminToken"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer")),
        "{scheme}"
    );
    for (path, method) in [
        ("/api/users", "post"),
        ("/api/webhook-logs", "get"),
        ("/api/tasks/{id}", "get"),
    ] {
        assert_eq!(
            v["paths"][path][method]["security"][0]["AdminToken"],
            json!([]),
            "{path} {method}"
        );
    }
    assert!(
        v["paths"]["/webhooks/instagram"]["post"]["security"].is_null(),
        "webhooks are signed, not bearer"
    );
}

/// Checks `v` against `schema` of the OpenAPI document `doc`: every property an object
/// schema declares is present, and `null` only where the document declares it nullable.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let nullable = schema["nullable"].as_bool().unwrap_or(false);
    let mut schema = schema;
    loop {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            schema = &doc["components"]["schemas"][name];
        } else if let Some(one) = schema["allOf"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s.get("$ref").is_some()))
        {
            schema = one;
        } else {
            break;
        }
    }
    if v.is_null() {
        if !(nullable || schema["nullable"].as_bool().unwrap_or(false)) {
            errs.push(format!("{at}: null, not declared nullable"));
        }
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), v.as_array()) {
        for (i, item) in values.iter().enumerate() {
            conforms(doc, items, item, &format!("{at}/{i}"), errs);
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, ps) in props {
            if ps["writeOnly"].as_bool() == Some(true) {
                continue;
            }
            match v.get(k) {
                None => errs.push(format!("{at}/{k}: missing")),
                Some(fv) => conforms(doc, ps, fv, &format!("{at}/{k}"), errs),
            }
        }
    }
}

/// Issue 13.5: answers have one shape. Every field the OpenAPI document declares for an
/// answer is present, also when it has no value (an unset resource field, the oldest
/// pending age of an empty queue), as `null` where the document declares it nullable;
/// error answers keep their own code and detail; a value PostgreSQL cannot store (a NUL
/// character) is a 422, not a 503 that invites retrying forever.
#[tokio::test]
async fn answers_carry_every_declared_field_and_errors_keep_their_code() {
    let app = spawn_app(Options::default()).await;
    let a = Admin { app: &app };
    let doc: Value = serde_json::from_str(&hookq_api::openapi_json()).unwrap();
    let id = app
        .ingest("/webhooks/instagram", &compact("c_nulls", "hello"))
        .await[0];
    app.wait_status(id, "processed").await;
    let (s, _) = a
        .post(
            "/api/persona-templates",
            json!({"name": "bare", "reply_template": "Thanks!"}),
        )
        .await;
    assert_eq!(s, 201);
    let mut checked = 0;
    for (path, schema_path) in [
        ("/api/users".to_string(), "/api/users"),
        ("/api/integrations".to_string(), "/api/integrations"),
        (
            "/api/persona-templates".to_string(),
            "/api/persona-templates",
        ),
        ("/api/personas".to_string(), "/api/personas"),
        ("/api/posts".to_string(), "/api/posts"),
        ("/api/webhook-logs".to_string(), "/api/webhook-logs"),
        (
            "/api/webhook-logs/stats".to_string(),
            "/api/webhook-logs/stats",
        ),
        (format!("/api/webhook-logs/{id}"), "/api/webhook-logs/{id}"),
    ] {
        let (s, v) = a.get(&path).await;
        assert_eq!(s, 200, "{path}: {v}");
        let op = &doc["paths"][schema_path]["get"];
        let content = op["responses"]["200"]["content"].as_object().unwrap();
        let schema = &content.values().next().unwrap()["schema"];
        let mut errs = Vec::new();
        conforms(&doc, schema, &v, "", &mut errs);
        assert!(errs.is_empty(), "{path}: {errs:?}\n{v}");
        checked += 1;
    }
    assert_eq!(checked, 8);
    let (_, stats) = a.get("/api/webhook-logs/stats").await;
    assert!(
        stats["queue"]["oldest_pending_age_secs"].is_null(),
        "an empty queue has no oldest pending age, and says so: {stats}"
    );

    let (s, v) = a
        .get("/api/users/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v) = a
        .post("/api/users", json!({"external_id": "user_123"}))
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("conflict")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("user_123"), "{v}");
    let (s, v) = a
        .post(
            "/api/persona-templates",
            json!({"name": "nul", "reply_template": "a\u{0}b"}),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (422, Some("invalid")), "{v}");
    let (s, v) = a.get("/api/webhook-logs?event_type=%00").await;
    assert_eq!((s, v["error"].as_str()), (422, Some("invalid")), "{v}");
    let (s, v) = json(app.post_instagram(r#"{"object": "nothing"}"#).await).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("unknown_event_shape")),
        "{v}"
    );
    app.stop().await;
}

/// Issue 13.4: a list's `total` describes the same data as its pages. Right after a
/// burst, a client that pages while `offset < total` collects every log that exists (a
/// total from a cached aggregate lagged the burst and such a client stopped early).
#[tokio::test]
async fn paging_while_offset_is_below_total_collects_every_log_after_a_burst() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let a = Admin { app: &app };
    // A first read, as a dashboard polling the list would make.
    let (s, v) = a.get("/api/webhook-logs?status=pending").await;
    assert_eq!((s, v["total"].as_i64()), (200, Some(0)), "{v}");
    let (s, v) = a.get("/api/webhook-logs").await;
    assert_eq!((s, v["total"].as_i64()), (200, Some(0)), "{v}");
    // The burst.
    let inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload)
         SELECT 'burst-' || i, 'instagram', 'comments', 'reply', '{}'
         FROM generate_series(1, 45) AS i RETURNING id",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    for filter in ["", "status=pending&"] {
        let mut seen = std::collections::BTreeSet::new();
        let mut offset = 0;
        loop {
            let (s, v) = a
                .get(&format!(
                    "/api/webhook-logs?{filter}limit=7&offset={offset}"
                ))
                .await;
            assert_eq!(s, 200, "{v}");
            let total = v["total"].as_i64().unwrap();
            assert_eq!(total, 45, "total with {filter:?} at offset {offset}: {v}");
            for item in v["items"].as_array().unwrap() {
                seen.insert(item["id"].as_i64().unwrap());
            }
            offset += 7;
            if offset >= total {
                break;
            }
        }
        let want: std::collections::BTreeSet<i64> = inserted.iter().copied().collect();
        assert_eq!(seen, want, "pages with {filter:?}");
    }
    // The resources' lists count the same way.
    let before = a.get("/api/users").await.1["total"].as_i64().unwrap();
    let (s, _) = a
        .post("/api/users", json!({"external_id": "burst_user"}))
        .await;
    assert_eq!(s, 201);
    let (_, v) = a.get("/api/users").await;
    assert_eq!(v["total"].as_i64(), Some(before + 1), "{v}");
    assert_eq!(
        v["items"].as_array().unwrap().len() as i64,
        before + 1,
        "{v}"
    );
    app.stop().await;
}

#[tokio::test]
async fn pausing_an_integration_holds_its_events_and_resuming_runs_them_once() {
    let app = spawn_app(Options::default()).await;
    let admin = Admin { app: &app };
    let (_, list) = admin.get("/api/integrations").await;
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["items"][0]["paused"], json!(false));

    let (status, paused) = admin
        .post(&format!("/api/integrations/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], json!(true));

    // Stored and answered while paused, but held: pending, no attempt spent.
    let r = app.post_instagram(&compact("paused_1", "hello")).await;
    assert_eq!(r.status(), 200);
    let log_id: i64 = sqlx::query_scalar("SELECT id FROM webhook_logs WHERE item_id = 'paused_1'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let (status, stats) = admin.get(&format!("/api/integrations/{id}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["paused"], json!(true));
    assert_eq!(stats["pending"], json!(1), "{stats}");
    let (status_now, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM webhook_logs WHERE id = $1")
            .bind(log_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((status_now.as_str(), attempts), ("pending", 0));

    // Budgets are fields like the others; a malformed one is a clear 422.
    let (status, body) = admin
        .patch(
            &format!("/api/integrations/{id}"),
            json!({"reply_rate_limit": "10/min", "max_concurrent": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply_rate_limit"], json!("10/min"));
    assert_eq!(body["max_concurrent"], json!(2));
    let (status, body) = admin
        .patch(
            &format!("/api/integrations/{id}"),
            json!({"reply_rate_limit": "fast"}),
        )
        .await;
    assert_error(status, &body, 422);

    let (status, _) = admin
        .post(&format!("/api/integrations/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200);
    let row = app.wait_status(log_id, "processed").await;
    assert_eq!(
        row.attempts, 1,
        "the held event ran once, its wait spent no attempt"
    );
    let (_, stats) = admin.get(&format!("/api/integrations/{id}/stats")).await;
    assert_eq!(stats["paused"], json!(false));
    assert_eq!(stats["rate_limit"], json!("10/min"));
    assert_eq!(stats["max_concurrent"], json!(2));
    assert!(stats["rate_used"].as_i64().unwrap() >= 1, "{stats}");
}

/// Contract section 13: `q` finds logs by message text, sender name, item id or dedup
/// key (any case, `%` and `_` taken literally); delete by filter deletes exactly the
/// matches that are not in flight and retry by filter takes `q` too; the conversation
/// view lists a comment thread in the order received, each event with its reply.
#[tokio::test]
async fn search_act_on_a_filter_and_the_conversation_view() {
    let app = spawn_app(Options::default()).await;
    let a = Admin { app: &app };
    let reply_in_thread = |id: &str, text: &str, parent: &str| {
        compact(id, text).replace(
            "\"item\":\"comment\"",
            &format!("\"item\":\"comment\",\"parent_id\":\"{parent}\""),
        )
    };
    let mut ids = Vec::new();
    for body in [
        compact("srch_1", "Do you ship to CANADA?"),
        compact("srch_2", "Love the 100%_cotton shirt"),
        reply_in_thread("srch_3", "and to Alaska?", "srch_1"),
        compact("srch_4", "Great colours"),
    ] {
        let (s, v) = json(app.post_instagram(&body).await).await;
        assert_eq!(s, 200, "{v}");
        ids.push(v["ids"][0].as_i64().unwrap());
    }
    for id in &ids {
        app.wait_status(*id, "processed").await;
    }
    let found = |v: &Value| -> Vec<i64> {
        let mut got: Vec<i64> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_i64().unwrap())
            .collect();
        got.sort_unstable();
        got
    };

    // Message text, any case; the item id; the dedup key; the sender's name.
    let (s, v) = a.get("/api/webhook-logs?q=canada").await;
    assert_eq!(
        (s, found(&v), v["total"].as_i64()),
        (200, vec![ids[0]], Some(1))
    );
    let (_, v) = a.get("/api/webhook-logs?q=srch_3").await;
    assert_eq!(found(&v), vec![ids[2]], "the item id");
    let (_, v) = a.get("/api/webhook-logs?q=SRCH_").await;
    assert_eq!(found(&v), ids, "the dedup keys and item ids of all four");
    let (_, v) = a.get("/api/webhook-logs?q=test%20user").await;
    assert_eq!(v["total"].as_i64(), Some(4), "the sender's name");
    // `%` and `_` match themselves, not any text.
    let (_, v) = a.get("/api/webhook-logs?q=100%25_cot").await;
    assert_eq!(found(&v), vec![ids[1]]);
    let (_, v) = a.get("/api/webhook-logs?q=100%25x").await;
    assert_eq!(v["total"].as_i64(), Some(0));
    // Combined with the other filters.
    let (_, v) = a.get("/api/webhook-logs?q=canada&status=failed").await;
    assert_eq!(v["total"].as_i64(), Some(0));
    let (s, v) = a
        .get(&format!("/api/webhook-logs?q={}", "x".repeat(201)))
        .await;
    assert_error(s, &v, 422);

    // The conversation view: the thread of srch_1, in the order received, with replies.
    let (s, log) = a.get(&format!("/api/webhook-logs/{}", ids[2])).await;
    assert_eq!(s, 200);
    let key = log["conversation_key"].as_str().unwrap().to_owned();
    assert!(key.ends_with(":thread:srch_1"), "{key}");
    let (s, conv) = a.get(&format!("/api/conversations/{key}")).await;
    assert_eq!(s, 200, "{conv}");
    let events = conv["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["log"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![ids[0], ids[2]]
    );
    assert!(
        events
            .iter()
            .all(|e| e["log"]["reply_text"].is_string() && e["delivery"].is_null()),
        "{conv}"
    );
    assert_eq!(conv["truncated"].as_bool(), Some(false));

    // Delete by filter: a status in flight is refused; the search's matches go.
    let (s, v) = a
        .post("/api/webhook-logs/delete", json!({"status": "pending"}))
        .await;
    assert_error(s, &v, 422);
    let (s, v) = a
        .post("/api/webhook-logs/delete", json!({"q": "canada"}))
        .await;
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(v["ids"], json!([ids[0]]));
    let (_, v) = a.get("/api/webhook-logs").await;
    assert_eq!(v["total"].as_i64(), Some(3));
    let (s, _) = a.get(&format!("/api/webhook-logs/{}", ids[0])).await;
    assert_eq!(s, 404);
    let texts: Vec<i64> = sqlx::query_scalar("SELECT log_id FROM webhook_log_text ORDER BY log_id")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(
        texts,
        ids[1..].to_vec(),
        "a deleted log's search text goes with it"
    );
    // Retry by filter takes `q` too (nothing failed matches: nothing retried).
    let (s, v) = a
        .post("/api/webhook-logs/retry", json!({"q": "alaska"}))
        .await;
    assert_eq!((s, v["retried"].as_u64()), (200, Some(0)), "{v}");
    app.stop().await;
}

/// Contract section 13: a template replay shows each log's old reply next to the new
/// one, over the logs a filter matches; a model is refused without an LLM.
#[tokio::test]
async fn a_template_replay_shows_old_and_new_replies_side_by_side() {
    let app = spawn_app(Options::default()).await;
    let a = Admin { app: &app };
    let mut ids = Vec::new();
    for (i, text) in [
        "Love it",
        "Nice colours",
        "spam spam http://a http://b http://c",
    ]
    .iter()
    .enumerate()
    {
        let (_, v) = json(app.post_instagram(&compact(&format!("tr_{i}"), text)).await).await;
        ids.push(v["ids"][0].as_i64().unwrap());
    }
    for id in &ids {
        app.wait_status(*id, "processed").await;
    }
    let (s, v) = a.post("/api/replays", json!({"model": "gpt-x"})).await;
    assert_error(s, &v, 422);
    let (s, made) = a
        .post(
            "/api/replays",
            json!({"reply_template": "New: {message}", "filter": {"status": "processed"}, "limit": 10}),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["total"].as_i64(), Some(3));
    let id = made["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let detail = loop {
        let (_, v) = a.get(&format!("/api/replays/{id}")).await;
        if v["replay"]["done"].as_bool() == Some(true) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "not done: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let by_log: HashMap<i64, &Value> = detail["items"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["log_id"].as_i64().unwrap(), i))
        .collect();
    let love = by_log[&ids[0]];
    assert_eq!(love["new_reply"].as_str(), Some("New: Love it"));
    assert!(
        love["old_reply"]
            .as_str()
            .is_some_and(|r| r != "New: Love it"),
        "{love}"
    );
    let spam = by_log[&ids[2]];
    assert_eq!(
        (
            spam["old_skip_reason"].as_str(),
            spam["new_outcome"].as_str(),
            spam["new_skip_reason"].as_str(),
            spam["new_reply"].as_str()
        ),
        (Some("spam"), Some("skipped"), Some("spam"), None),
        "the rules still apply: {spam}"
    );
    assert_eq!(detail["replay"]["changed"].as_i64(), Some(2));
    // The logs keep their own replies.
    let (_, log) = a.get(&format!("/api/webhook-logs/{}", ids[0])).await;
    assert_eq!(log["reply_text"], love["old_reply"]);
    let (_, list) = a.get("/api/replays").await;
    assert_eq!(list["total"].as_i64(), Some(1));
    let (s, _) = a.get("/api/replays/999999").await;
    assert_eq!(s, 404);
    app.stop().await;
}

/// Contract section 12: `HOOKQ_READONLY_TOKEN` reads everything and is answered 403 for
/// any change; every change (and the refused attempt) is listed by `GET /api/audit`,
/// newest first, with its role, action, resource and status, filterable.
#[tokio::test]
async fn a_read_only_token_reads_is_refused_changes_and_every_change_is_audited() {
    const RO: &str = "read-only-token-for-tests";
    let app = spawn_app(Options {
        env: env_of(&[("HOOKQ_READONLY_TOKEN", RO)]),
        ..Options::default()
    })
    .await;
    let a = Admin { app: &app };
    let ro = |method: reqwest::Method, path: &str| {
        app.http
            .request(method, format!("{}{path}", app.base))
            .bearer_auth(RO)
    };
    let (s, v) = json(
        ro(reqwest::Method::GET, "/api/webhook-logs")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = json(
        ro(reqwest::Method::GET, "/api/session")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["role"].as_str()), (200, Some("readonly")));
    let (_, v) = a.get("/api/session").await;
    assert_eq!(v["role"].as_str(), Some("admin"));
    let (s, v) = json(
        ro(reqwest::Method::POST, "/api/users")
            .json(&json!({"external_id": "ro_user", "name": "No"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(s, &v, 403);
    let (s, v) = json(
        ro(reqwest::Method::DELETE, "/api/webhook-logs/1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(s, &v, 403);

    let (s, user) = a
        .post(
            "/api/users",
            json!({"external_id": "audited", "name": "Audited"}),
        )
        .await;
    assert_eq!(s, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let (s, _) = a
        .patch(&format!("/api/users/{id}"), json!({"name": "Renamed"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = a.delete(&format!("/api/users/{id}")).await;
    assert_eq!(s, 200);

    let (s, audit) = a.get("/api/audit").await;
    assert_eq!(s, 200, "{audit}");
    let rows: Vec<(String, String, String, Option<String>, i64)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["role"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["resource_type"].as_str().unwrap().to_owned(),
                e["resource_id"].as_str().map(str::to_owned),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        rows,
        vec![
            (s("admin"), s("delete"), s("users"), Some(id.clone()), 200),
            (s("admin"), s("update"), s("users"), Some(id.clone()), 200),
            (s("admin"), s("create"), s("users"), None, 201),
            (
                s("readonly"),
                s("delete"),
                s("webhook-logs"),
                Some(s("1")),
                403
            ),
            (s("readonly"), s("create"), s("users"), None, 403),
        ],
        "newest first; reads are not recorded"
    );
    let (_, v) = a.get("/api/audit?role=readonly").await;
    assert_eq!(v["total"].as_i64(), Some(2));
    let (_, v) = a
        .get(&format!("/api/audit?resource_type=users&resource_id={id}"))
        .await;
    assert_eq!(v["total"].as_i64(), Some(2));
    let (_, v) = a.get("/api/audit?action=create&limit=1").await;
    assert_eq!(
        (v["total"].as_i64(), v["items"].as_array().unwrap().len()),
        (Some(2), 1)
    );
    app.stop().await;
}

/// `DATABASE_READ_URL` (contract section 11): the admin API reads from the replica —
/// here a separate database whose rows differ, so where each read came from shows —
/// writes go to the primary, and an operator's reads just after their own change come
/// from the primary: on the API host that made it, and on another host while the
/// `hookq_wrote` cookie the change answered with is fresh.
#[tokio::test]
async fn reads_come_from_the_replica_except_just_after_an_operators_own_write() {
    use hookq_core::resources::{NewUser, create_user};
    let replica = hookq_testkit::fresh_db().await;
    hookq_testkit::demo::load(&replica.pool).await.unwrap();
    create_user(
        &replica.pool,
        &NewUser {
            external_id: "only-on-replica".into(),
            name: String::new(),
        },
    )
    .await
    .unwrap();
    let app = spawn_app(Options {
        env: env_of(&[("DATABASE_READ_URL", &replica.url)]),
        worker: false,
        ..Options::default()
    })
    .await;
    // A second API host over the same primary and replica.
    let other = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = hookq_api::AppState::new(app.config.clone(), app.pool().clone());
        tokio::spawn(async move {
            hookq_api::serve(listener, state, std::future::pending())
                .await
                .unwrap()
        });
        base
    };
    let ids_at = |base: String, cookie: Option<String>| {
        let http = app.http.clone();
        async move {
            let mut req = http
                .get(format!("{base}/api/users?limit=100"))
                .bearer_auth(ADMIN_TOKEN);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let page: Value = req.send().await.unwrap().json().await.unwrap();
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["external_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let from_replica = |ids: &[String]| ids.iter().any(|i| i == "only-on-replica");

    assert!(
        from_replica(&ids_at(app.base.clone(), None).await),
        "lists read the replica"
    );
    let r = app
        .http
        .post(format!("{}/api/users", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"external_id": "made-now", "name": "New"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("hookq_wrote="))
        .expect("a change answers with the hookq_wrote cookie");
    let made: Value = r.json().await.unwrap();
    let on_primary: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE external_id = 'made-now'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    let on_replica: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE external_id = 'made-now'")
            .fetch_one(&replica.pool)
            .await
            .unwrap();
    assert_eq!(
        (on_primary, on_replica),
        (1, 0),
        "the write went to the primary"
    );

    // The host that made the change reads the primary: the new row is there.
    let after = ids_at(app.base.clone(), None).await;
    assert!(
        after.contains(&"made-now".to_owned()) && !from_replica(&after),
        "{after:?}"
    );
    let got = app
        .http
        .get(format!(
            "{}/api/users/{}",
            app.base,
            made["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    // Another host: the replica without the cookie, the primary with it.
    assert!(from_replica(&ids_at(other.clone(), None).await));
    let with_cookie = ids_at(other, Some(cookie)).await;
    assert!(
        with_cookie.contains(&"made-now".to_owned()) && !from_replica(&with_cookie),
        "{with_cookie:?}"
    );
    app.stop().await;
}
