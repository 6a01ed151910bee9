//! `/metrics`, retention, and what real `hookq api` and `hookq worker` processes write
//! to their logs (issue 5).

use std::{collections::HashMap, time::Duration};

use crate::common::*;
use hookq_testkit::demo::DEMO_IG_ACCOUNT;
use hookq_testkit::wait_for;
use serde_json::json;
use tokio::io::AsyncReadExt;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

#[tokio::test]
async fn metrics_expose_webhooks_jobs_queue_and_pool() {
    let app = spawn_app(Options::default()).await;
    let (_, ack) = json(app.post_instagram(&compact("m_1", "hello")).await).await;
    app.wait_status(ack["ids"][0].as_i64().unwrap(), "processed")
        .await;
    let r = app
        .http
        .post(format!("{}/webhooks/instagram", app.base))
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    // The recorder is process-wide (tests share it), so check presence, not exact counts.
    for needle in [
        "hookq_webhooks_received_total{source=\"instagram\",result=\"accepted\"}",
        "hookq_webhooks_received_total{source=\"instagram\",result=\"invalid_signature\"}",
        "hookq_webhook_signature_failures_total{source=\"instagram\"}",
        "hookq_webhook_request_duration_seconds_bucket{source=\"instagram\",le=\"0.005\"}",
        "hookq_webhook_logs{source=\"instagram\",event_type=\"comment\",status=\"processed\"} 1",
        "hookq_dead_letters 0",
        "hookq_jobs{state=\"ready\"} 0",
        "hookq_jobs{state=\"dead\"} 0",
        "hookq_queue_depth 0",
        "hookq_queue_oldest_pending_age_seconds 0",
        "hookq_processing_recent_seconds_count 1",
        "hookq_processing_recent_seconds_bucket{le=\"+Inf\"} 1",
        "hookq_attempts_recent 1",
        "hookq_db_pool_connections{state=\"in_use\"}",
        "hookq_db_pool_max_connections",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    app.stop().await;
}

/// The whole `/metrics` exposition (the recorder's counters and histograms and the
/// database gauges written by hand) is well-formed Prometheus text: every family has
/// exactly one `TYPE`, every sample's name and labels fit its family's type, and
/// Prometheus parsers read every sample as its declared type. Checked three ways: a
/// strict check written here, the `prometheus-parse` crate, and `promtool check metrics`
/// when promtool is installed (`$HOOKQ_PROMTOOL` or on `PATH`; optional).
#[tokio::test]
async fn metrics_exposition_has_one_correct_type_per_family() {
    let app = spawn_app(Options::default()).await;
    // Samples in every family that can have some: a processed log (processing time,
    // attempts, logs by status), an accepted and a refused webhook (counters, latency).
    let (_, ack) = json(app.post_instagram(&compact("fam_1", "hello")).await).await;
    app.wait_status(ack["ids"][0].as_i64().unwrap(), "processed")
        .await;
    let r = app
        .http
        .post(format!("{}/webhooks/instagram", app.base))
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let families = exposition::check(&text).unwrap_or_else(|problems| {
        panic!(
            "/metrics is not well-formed:\n  {}\n\n{text}",
            problems.join("\n  ")
        )
    });
    // The processing-time window: a histogram, and its percentiles as a summary.
    assert_eq!(
        families
            .get("hookq_processing_recent_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        families
            .get("hookq_processing_recent_quantile_seconds")
            .map(String::as_str),
        Some("summary")
    );
    assert_eq!(
        families
            .get("hookq_webhook_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    exposition::check_with_prometheus_parse(&text);
    exposition::check_with_promtool(&text);
    app.stop().await;
}

/// The strict check itself: it accepts the text format's reference example and refuses
/// each kind of malformed family, among them the shape `/metrics` once had (a `gauge`
/// with `_bucket`/`_sum`/`_count` and `quantile` series under one name).
#[test]
fn exposition_check_refuses_malformed_families() {
    let good = "# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000
http_requests_total{method=\"post\",code=\"400\"} 3 1395066363000
# TYPE msdos_file_access_time_seconds gauge
msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le=\"0.05\"} 24054
http_request_duration_seconds_bucket{le=\"0.1\"} 33444
http_request_duration_seconds_bucket{le=\"+Inf\"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile=\"0.5\"} 4773
rpc_duration_seconds{quantile=\"0.99\"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
";
    let families = exposition::check(good).expect("the reference example is well-formed");
    assert_eq!(families.len(), 4);
    exposition::check_with_prometheus_parse(good);

    let bad = [
        (
            "a gauge with histogram and summary series",
            "# TYPE x_seconds gauge\nx_seconds_bucket{le=\"1\"} 1\nx_seconds_bucket{le=\"+Inf\"} 1\nx_seconds_sum 0.5\nx_seconds_count 1\nx_seconds{quantile=\"0.5\"} 0.5\n",
        ),
        ("a sample without TYPE", "x 1\n"),
        ("two TYPE lines", "# TYPE x gauge\nx 1\n# TYPE x gauge\n"),
        (
            "a family split in two",
            "# TYPE x gauge\nx{a=\"1\"} 1\n# TYPE y gauge\ny 1\nx{a=\"2\"} 1\n",
        ),
        ("a bare histogram sample", "# TYPE x histogram\nx 1\n"),
        (
            "le on a histogram's count",
            "# TYPE x histogram\nx_bucket{le=\"+Inf\"} 1\nx_count{le=\"1\"} 1\n",
        ),
        (
            "no +Inf bucket",
            "# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_count 1\n",
        ),
        (
            "count unlike +Inf",
            "# TYPE x histogram\nx_bucket{le=\"+Inf\"} 2\nx_count 1\n",
        ),
        (
            "buckets going down",
            "# TYPE x histogram\nx_bucket{le=\"1\"} 3\nx_bucket{le=\"+Inf\"} 2\nx_count 2\n",
        ),
        ("a summary without quantile", "# TYPE x summary\nx 1\n"),
        ("a counter with _count", "# TYPE x counter\nx_count 1\n"),
        (
            "quantile on a gauge",
            "# TYPE x gauge\nx{quantile=\"0.5\"} 1\n",
        ),
        ("an unknown type", "# TYPE x meter\nx 1\n"),
        ("a value that is no number", "# TYPE x gauge\nx one\n"),
        (
            "a repeated series",
            "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",
        ),
        ("an unterminated label", "# TYPE x gauge\nx{a=\"1} 1\n"),
    ];
    for (what, text) in bad {
        assert!(exposition::check(text).is_err(), "accepted {what}:\n{text}");
    }
}

/// A strict reading of the Prometheus text exposition format 0.0.4.
pub(crate) mod exposition {
    use std::collections::{BTreeMap, HashMap, HashSet};

    const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// Every family's name and type, or every problem found.
    pub(crate) fn check(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
        let mut problems = Vec::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        // Families whose samples are over: another family's sample came after them.
        let mut closed: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: HashSet<String> = HashSet::new();
        let mut samples: Vec<(String, String, Sample)> = Vec::new();

        for (n, line) in text.lines().enumerate() {
            let at = format!("line {}: {line}", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    ["TYPE", name, ty] => {
                        if !valid_name(name) {
                            problems.push(format!("bad family name: {at}"));
                        }
                        if !TYPES.contains(ty) {
                            problems.push(format!("unknown type: {at}"));
                        }
                        if types.insert(name.to_string(), ty.to_string()).is_some() {
                            problems.push(format!("second TYPE for {name}: {at}"));
                        }
                        if closed.contains(*name) || current.as_deref() == Some(*name) {
                            problems.push(format!("TYPE after samples of {name}: {at}"));
                        }
                    }
                    ["TYPE", ..] => problems.push(format!("malformed TYPE: {at}")),
                    ["HELP", name, ..] if !helps.insert(name.to_string()) => {
                        problems.push(format!("second HELP for {name}: {at}"));
                    }
                    _ => {} // a comment
                }
                continue;
            }
            let sample = match parse_sample(line) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{e}: {at}"));
                    continue;
                }
            };
            // The family: the name itself when declared, else the name less a
            // histogram's or summary's suffix.
            let (family, suffix) = if types.contains_key(&sample.name) {
                (sample.name.clone(), "")
            } else {
                match ["_bucket", "_sum", "_count"].iter().find_map(|sfx| {
                    let base = sample.name.strip_suffix(sfx)?;
                    types.contains_key(base).then(|| (base.to_string(), *sfx))
                }) {
                    Some(found) => found,
                    None => {
                        problems.push(format!("sample with no TYPE for its family: {at}"));
                        continue;
                    }
                }
            };
            let ty = types[&family].as_str();
            let has = |l: &str| sample.labels.iter().any(|(k, _)| k == l);
            let allowed = match ty {
                "histogram" => match suffix {
                    "_bucket" => has("le"),
                    "_sum" | "_count" => !has("le"),
                    _ => false,
                },
                "summary" => match suffix {
                    "" => has("quantile"),
                    _ => !has("quantile"),
                },
                _ => suffix.is_empty(),
            };
            if !allowed {
                problems.push(format!("not a sample of a {ty}: {at}"));
            }
            if has("le") && ty != "histogram" {
                problems.push(format!("le label outside a histogram: {at}"));
            }
            if has("quantile") && ty != "summary" {
                problems.push(format!("quantile label outside a summary: {at}"));
            }
            if current.as_deref() != Some(family.as_str()) {
                if closed.contains(&family) {
                    problems.push(format!("samples of {family} are not together: {at}"));
                }
                if let Some(prev) = current.replace(family.clone()) {
                    closed.insert(prev);
                }
            }
            let mut key_labels = sample.labels.clone();
            key_labels.sort();
            if !series.insert(format!("{}{key_labels:?}", sample.name)) {
                problems.push(format!("repeated series: {at}"));
            }
            samples.push((family, suffix.to_string(), sample));
        }
        check_histograms(&types, &samples, &mut problems);
        if problems.is_empty() {
            Ok(types)
        } else {
            Err(problems)
        }
    }

    /// Per histogram series: buckets cumulative in `le` order, a `+Inf` bucket, and a
    /// `_count` equal to it.
    fn check_histograms(
        types: &BTreeMap<String, String>,
        samples: &[(String, String, Sample)],
        problems: &mut Vec<String>,
    ) {
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for (family, suffix, s) in samples {
            if types[family] != "histogram" {
                continue;
            }
            let mut rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").collect();
            rest.sort();
            let key = format!("{family}{rest:?}");
            match suffix.as_str() {
                "_bucket" => {
                    let le = &s.labels.iter().find(|(k, _)| k == "le").unwrap().1;
                    match parse_float(le) {
                        Some(le) => buckets.entry(key).or_default().push((le, s.value)),
                        None => problems.push(format!("bad le {le:?} in {}", s.name)),
                    }
                }
                "_count" => {
                    counts.insert(key, s.value);
                }
                _ => {}
            }
        }
        for (key, mut bs) in buckets {
            bs.sort_by(|a, b| a.0.total_cmp(&b.0));
            if bs.windows(2).any(|w| w[1].1 < w[0].1) {
                problems.push(format!("{key}: buckets are not cumulative: {bs:?}"));
            }
            match bs.last() {
                Some(&(le, n)) if le == f64::INFINITY => {
                    if counts.get(&key) != Some(&n) {
                        problems.push(format!("{key}: _count is not the +Inf bucket"));
                    }
                }
                _ => problems.push(format!("{key}: no +Inf bucket")),
            }
        }
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_float(s: &str) -> Option<f64> {
        match s {
            "+Inf" | "Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            s if s.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => None,
            s => s.parse().ok(),
        }
    }

    /// `name{label="value",…} value [timestamp]`.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line.find(['{', ' ', '\t']).ok_or("no value")?;
        let name = &line[..end];
        if !valid_name(name) {
            return Err("bad metric name".into());
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut closed_at = None;
            loop {
                // Skip separators, then `}` or `name="value"`.
                while let Some(&(_, c)) = chars.peek() {
                    if c == ',' || c == ' ' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some(&(i, '}')) => {
                        closed_at = Some(i);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if !valid_name(&key) || key.contains(':') {
                    return Err(format!("bad label name {key:?}"));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(format!("label {key} has no quoted value"));
                }
                let mut value = String::new();
                let mut terminated = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("bad escape \\{other:?}")),
                        },
                        '"' => {
                            terminated = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !terminated {
                    return Err(format!("unterminated value of label {key}"));
                }
                if labels.iter().any(|(k, _)| k == &key) {
                    return Err(format!("label {key} twice"));
                }
                labels.push((key, value));
                match chars.peek() {
                    Some(&(_, ',')) | Some(&(_, '}')) => {}
                    _ => return Err("labels are not separated by commas".into()),
                }
            }
            let closed_at = closed_at.ok_or("unterminated labels")?;
            rest = &inner[closed_at + 1..];
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let value = match fields.as_slice() {
            [v] => v,
            [v, ts] if ts.parse::<i64>().is_ok() => v,
            _ => return Err("expected a value and an optional timestamp".into()),
        };
        let value = parse_float(value).ok_or_else(|| format!("bad value {value:?}"))?;
        Ok(Sample {
            name: name.to_string(),
            labels,
            value,
        })
    }

    /// The `prometheus-parse` crate reads every sample as the type its family declares:
    /// histograms and summaries as such (it leaves their `_sum`/`_count` untyped), and
    /// nothing else untyped; no `le` or `quantile` label on a counter or gauge.
    pub(crate) fn check_with_prometheus_parse(text: &str) {
        use prometheus_parse::{Scrape, Value};
        let families: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["#", "TYPE", name, ty] => Some((name, ty)),
                _ => None,
            })
            .collect();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut seen: HashMap<String, &str> = HashMap::new();
        for s in &scrape.samples {
            let kind = match &s.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                Value::Histogram(h) => {
                    assert!(
                        h.iter().any(|b| b.less_than == f64::INFINITY),
                        "{}: no +Inf bucket",
                        s.metric
                    );
                    "histogram"
                }
                Value::Summary(_) => "summary",
                Value::Untyped(_) => {
                    let base = s
                        .metric
                        .strip_suffix("_sum")
                        .or_else(|| s.metric.strip_suffix("_count"));
                    let ok = base
                        .and_then(|b| families.get(b))
                        .is_some_and(|t| *t == "histogram" || *t == "summary");
                    assert!(ok, "prometheus-parse reads {} as untyped", s.metric);
                    continue;
                }
            };
            if kind == "counter" || kind == "gauge" {
                assert!(
                    s.labels.get("le").is_none() && s.labels.get("quantile").is_none(),
                    "prometheus-parse reads {}{{{}}} as a {kind}",
                    s.metric,
                    s.labels
                );
            }
            seen.insert(s.metric.clone(), kind);
        }
        for (name, kind) in &seen {
            assert_eq!(
                families.get(name.as_str()),
                Some(kind),
                "prometheus-parse reads {name} as a {kind}"
            );
        }
    }

    /// `promtool check metrics` (Prometheus's own parser and linter), when installed.
    pub(crate) fn check_with_promtool(text: &str) {
        use std::io::Write;
        let promtool = std::env::var("HOOKQ_PROMTOOL").unwrap_or_else(|_| "promtool".into());
        let child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: `promtool check metrics` skipped");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn retention_deletes_old_processed_logs_in_batches_and_keeps_dead_letters() {
    let app = spawn_app(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let pool = app.pool();
    // 5 old processed, 1 old dead letter, 1 old failed, 2 fresh processed.
    let rows = [
        ("processed", 40, 5),
        ("dead_letter", 40, 1),
        ("failed", 40, 1),
        ("processed", 1, 2),
    ];
    let mut n = 0;
    for (status, age_days, count) in rows {
        for _ in 0..count {
            n += 1;
            sqlx::query(
                "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
                     received_at, processed_at)
                 VALUES ($1, 'instagram', 'comment', 'reply', '{}', $2,
                     now() - make_interval(days => $3), now() - make_interval(days => $3))",
            )
            .bind(format!("ret_{n}"))
            .bind(status)
            .bind(age_days)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let purged = hookq_tasks::ops::retention::purge(pool, 30, 2)
        .await
        .unwrap();
    assert_eq!(purged.deleted, 5, "three batches of at most 2");
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM webhook_logs GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![
            ("dead_letter".into(), 1),
            ("failed".into(), 1),
            ("processed".into(), 2)
        ]
    );
    assert_eq!(
        hookq_tasks::ops::retention::purge(pool, 30, 2)
            .await
            .unwrap()
            .deleted,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn retention_job_runs_from_the_queue() {
    let app = spawn_app(Options::default()).await;
    let pool = app.pool().clone();
    sqlx::query(
        "INSERT INTO webhook_logs (dedup_key, source, event_type, handling, payload, status,
             received_at, processed_at)
         VALUES ('old', 'instagram', 'comment', 'reply', '{}', 'processed',
             now() - interval '3 months', now() - interval '3 months')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let job = hookq_tasks::queue::enqueue(
        &mut tx,
        &hookq_tasks::ops::retention::PurgeLogs { retention_days: 2 },
        &Default::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let done = wait_for(20, "the purge job to complete", || {
        let pool = pool.clone();
        async move {
            let j = hookq_tasks::queue::get_job(&pool, job).await.unwrap()?;
            (j.status == hookq_tasks::queue::JobStatus::Completed).then_some(j)
        }
    })
    .await;
    // A month with no partition of its own: the default partition, row by row.
    assert_eq!(
        done.result,
        Some(json!({"deleted": 1, "partitions_dropped": 0}))
    );
    app.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `hookq api` with JSON logs at debug level: after signed webhooks (good and
/// bad), admin calls (right and wrong token) and an integration created with secrets,
/// no line holds a secret, a token or a signature, and the request's correlation id is
/// logged.
#[tokio::test]
async fn api_process_logs_are_json_and_never_hold_secrets() {
    let (_db, mut env) = demo_env(&[]).await;
    let port = free_port();
    env.insert("HOOKQ_BIND".into(), format!("127.0.0.1:{port}"));
    env.insert("HOOKQ_LOG_FORMAT".into(), "json".into());
    let mut cmd = hookq(&env);
    cmd.env("RUST_LOG", "debug,sqlx=debug,hyper=info,h2=info")
        .arg("api")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for(30, "hookq api to answer /health", || {
        let http = http.clone();
        let url = format!("{base}/health");
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        }
    })
    .await;

    let body = compact("log_1", "hello there");
    let sig = meta_signature(body.as_bytes());
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad_sig = "sha256=deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    let r = http
        .post(format!("{base}/webhooks/instagram"))
        .header("X-Hub-Signature-256", bad_sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let bridge = fixture("bridge_message_received.json");
    let bridge_sig =
        hookq_core::intake::signature::hmac_hex(BRIDGE_SECRET.as_bytes(), bridge.as_bytes());
    let r = http
        .post(format!("{base}/webhooks/whatsapp"))
        .header("X-Webhook-Signature", &bridge_sig)
        .body(bridge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/webhook-logs"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/webhook-logs"))
        .bearer_auth("not-the-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let users: serde_json::Value = http
        .get(format!("{base}/api/users"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access_token = "EAAG-access-token-never-logged";
    let callback_secret = "whsec_bmV2ZXItbG9nLXRoaXMtc2VjcmV0";
    let r = http
        .post(format!("{base}/api/integrations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &json!({"user_id": users["items"][0]["id"], "platform": "whatsapp", "account_id": "555",
                      "access_token": access_token, "callback_secret": callback_secret}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(format!("{base}/api/webhook-logs/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut out = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();

    assert!(out.lines().count() > 3, "expected log lines, got:\n{out}");
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let forbidden: HashMap<&str, &str> = HashMap::from([
        ("admin token", ADMIN_TOKEN),
        ("wrong admin token", "not-the-token-xyz"),
        ("Meta app secret", META_SECRET),
        ("Bridge secret", BRIDGE_SECRET),
        ("verify token", VERIFY_TOKEN),
        ("Meta signature", sig.trim_start_matches("sha256=")),
        ("bad signature", "deadbeefdeadbeef"),
        ("Bridge signature", bridge_sig.as_str()),
        ("access token", access_token),
        ("callback secret", callback_secret),
        ("database password", "postgres://"),
    ]);
    for (what, secret) in forbidden {
        assert!(
            !out.contains(secret),
            "the {what} appears in the log:\n{out}"
        );
    }
    assert!(
        out.contains("\"correlation_id\""),
        "the request's correlation id is logged:\n{out}"
    );
}

/// A real `hookq worker --single` with JSON logs (issue 5): the lines it writes while
/// processing a webhook's job and delivering its reply are in `process_webhook` and
/// `deliver_reply` spans that carry the log id, the job id and the correlation id the
/// API stored with the log, so a request can be followed from intake to delivery.
#[tokio::test]
async fn worker_logs_carry_the_requests_correlation_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/reply"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let app = spawn_app(Options {
        worker: false,
        env: delivery_env(),
        ..Options::default()
    })
    .await;
    set_delivery(
        app.pool(),
        DEMO_IG_ACCOUNT,
        "callback",
        Some(&format!("{}/hooks/reply", server.uri())),
    )
    .await;
    let id = app
        .ingest("/webhooks/instagram", &fixture("compact_comment.json"))
        .await[0];
    let stored = hookq_core::logs::get(app.pool(), id)
        .await
        .unwrap()
        .unwrap();
    let correlation = stored
        .correlation_id
        .expect("the API stores the request's correlation id");
    let job_id = stored.job_id.expect("the log's job");

    let mut env = base_env(&app.db.url);
    env.extend(delivery_env());
    env.insert("HOOKQ_LOG_FORMAT".into(), "json".into());
    let mut child = hookq(&env)
        .env("RUST_LOG", "info,hookq_tasks=debug,hookq_core=debug")
        .args(["worker", "--single"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read while the worker writes, so a full pipe can never stall it.
    let mut stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        stderr.read_to_string(&mut out).await.unwrap();
        out
    });
    // Processed is set by the delivery job once the callback answered.
    let row = app.wait_status(id, "processed").await;
    assert_eq!(row.outcome.map(|o| o.as_str()), Some("replied"));
    assert_eq!(wait_requests(&server, 1).await.len(), 1);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();

    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The line's span of that name, when it was written inside one for this log.
    let span_of = |line: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name && s["log_id"] == id)
            .cloned()
    };
    for (name, message) in [
        ("process_webhook", "webhook processed"),
        ("deliver_reply", "delivering reply"),
    ] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message && span_of(l, name).is_some())
            .unwrap_or_else(|| panic!("no {message:?} line in a {name} span for log {id}:\n{out}"));
        let span = span_of(line, name).unwrap();
        assert_eq!(
            span["correlation_id"], correlation,
            "the {name} span carries the request's correlation id: {line}"
        );
        if name == "process_webhook" {
            assert_eq!(span["job_id"], job_id, "{line}");
        }
    }
    app.stop().await;
}
