//! Failure of a replica under load: two gateway replicas behind the load balancer `compose/up --replicas 2` runs
//! (nginx, configured by `lb_config` in `compose/lib.sh`), eight clients sending chat completions through it all
//! the time, and one replica killed with SIGKILL mid-run, then started again on its port and spool.
//!
//! What a client and the ledger must see:
//! - no request started after the kill fails: nginx sends a POST to the other replica only when the dead one
//!   refused the connection, before any of the request was sent, which is exactly the case of a dead replica;
//!   requests the replica held at the kill instant may fail (counted and printed);
//! - traffic leaves the dead replica at once (under 1 s): from nginx's access log, no request that started after
//!   the kill ended at the dead replica, and no request started after the kill took 1 s or more;
//! - the restarted replica drains its spool (the spool ends empty);
//! - the ledger holds exactly one row per answered request, by request id, those the killed replica answered just
//!   before the kill included: the replicas run with `spool.write_ahead`, so every event is on disk from the moment
//!   it is handed to Kafka, and the restarted replica sends what Kafka had not acknowledged (without write-ahead,
//!   the events of the last `spool.after` before the kill were only in memory: `tests/tests/spool.rs` shows them
//!   lost); a request that failed may have a row (the replica settled it) but no more than one.
//!
//! Real broker and ClickHouse (a topic and a database of the test's own), billing-consumer and both gateways as
//! child processes, the mock provider in-process.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tollgate_tests::mock_provider::Behaviour;
use tollgate_tests::procs::{
    ChildBillingConsumer, ChildConfig, ChildGateway, free_port, kill9, scratch_dir, terminate, workspace_root,
};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions, eventually, request_id, sample};

/// Clients sending one request after another through the load balancer.
const CLIENTS: usize = 8;
/// How long the mock provider takes to answer: a replica always holds some requests when it is killed.
const UPSTREAM_MILLIS: u64 = 20;
/// The replicas' spool: every event written ahead, as `compose/up` runs them.
const SPOOL: &str = "write_ahead = true";
/// How long requests must stay within after the kill.
const MAX_LATENCY: Duration = Duration::from_secs(1);

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One request a client sent through the load balancer.
#[derive(Debug, Clone)]
struct Sent {
    /// Wall-clock seconds, as nginx's `$msec`.
    started: f64,
    ended: f64,
    latency: Duration,
    /// 0: no whole answer (connection error, body cut).
    status: u16,
    request_id: String,
}

async fn client(lb: String, id: usize, stop: Rc<Cell<bool>>, sent: Rc<RefCell<Vec<Sent>>>) {
    let (_, _, key) = CONSUMERS[id % CONSUMERS.len()];
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut n = 0;
    while !stop.get() {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("client {id} request {n}")}]});
        let started = epoch_now();
        let clock = Instant::now();
        let (status, request_id) = match http
            .post(format!("{lb}/v1/chat/completions"))
            .bearer_auth(key)
            .send_json(&body)
            .await
        {
            Ok(mut response) => {
                let request_id = request_id(response.headers());
                match response.body().await {
                    Ok(_) => (response.status().as_u16(), request_id),
                    Err(_) => (0, request_id),
                }
            }
            Err(_) => (0, String::new()),
        };
        sent.borrow_mut().push(Sent {
            started,
            ended: epoch_now(),
            latency: clock.elapsed(),
            status,
            request_id,
        });
        n += 1;
    }
}

/// nginx in front of the replicas, from the configuration `compose/up` uses, in a scratch directory of its own.
struct LoadBalancer {
    child: Child,
    dir: PathBuf,
    url: String,
}

/// One line of the load balancer's access log.
#[derive(Debug)]
struct Logged {
    /// When the request ended (`$msec`) and how long it took (`$request_time`), in seconds.
    ended: f64,
    took: f64,
    status: u16,
    /// Every replica tried, in order (`$upstream_addr`).
    upstreams: Vec<String>,
    request_id: String,
}

impl Logged {
    fn started(&self) -> f64 {
        self.ended - self.took
    }

    fn last_upstream(&self) -> &str {
        self.upstreams.last().map_or("", String::as_str)
    }
}

impl LoadBalancer {
    fn start(upstream_ports: &[u16]) -> Self {
        let nginx = std::env::var_os("TOLLGATE_TEST_NGINX_BIN")
            .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
        assert!(
            nginx.exists(),
            "{} is missing: compose/install installs nginx (the load balancer of compose/up --replicas)",
            nginx.display()
        );
        let dir = scratch_dir("lb");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let output = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && lb_config "${@:2}""#)
            .arg("lb-config")
            .arg(workspace_root().join("compose/lib.sh"))
            .arg(&dir)
            .arg(dir.join("access.log"))
            .arg(port.to_string())
            .args(upstream_ports.iter().map(u16::to_string))
            .output()
            .expect("run lb_config");
        assert!(
            output.status.success(),
            "lb_config: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, &output.stdout).unwrap();
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("error.log")).unwrap())
            .spawn()
            .expect("start nginx");
        let mut lb = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", lb.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                lb.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> Vec<Logged> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap()
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert!(fields.len() >= 8, "an access log line: {line}");
                Logged {
                    ended: fields[0].parse().unwrap(),
                    took: fields[1].parse().unwrap(),
                    status: fields[2].parse().unwrap(),
                    // "a, b" between replicas tried, "a : b" across internal redirects.
                    upstreams: fields[3]
                        .split([',', ':'])
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .chunks(2)
                        .map(|pair| pair.join(":"))
                        .filter(|addr| addr != "-")
                        .collect(),
                    request_id: fields[6].to_owned(),
                }
            })
            .collect()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        // TERM: nginx's master stops its workers too (a KILLed master would leave them listening).
        terminate(&mut self.child, Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!(
                "the load balancer's configuration and logs are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Bytes in the spool's segment files.
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Rows of the usage ledger (deduplicated: FINAL) per request id.
async fn ledger_rows(stack: &Stack) -> HashMap<String, u64> {
    stack
        .query("SELECT request_id, count() AS n FROM usage_events FINAL GROUP BY request_id")
        .await
        .into_iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_owned(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn a_replica_killed_under_load_fails_no_later_request_and_bills_each_answered_one_once() {
    // The stack gives the topic, the database and the mock provider; its own gateway takes no traffic here.
    let stack = Stack::start(StackOptions {
        billing: false,
        quota_loop: false,
        meter: false,
        ..StackOptions::default()
    })
    .await;
    stack.mock.set_behaviour(Behaviour::Delay {
        millis: UPSTREAM_MILLIS,
    });
    let scratch = scratch_dir("replicas");
    let brokers = stack.infra.brokers.clone();
    let group = format!("billing-{}", stack.topic);
    let billing =
        ChildBillingConsumer::start(&stack.child_billing_config(&group), &scratch, "billing-consumer").await;

    let mock = stack.mock.endpoint();
    let spool_a = scratch.join("gateway-a-spool");
    let spool_b = scratch.join("gateway-b-spool");
    let config = |spool_dir| ChildConfig {
        brokers: &brokers,
        topic: &stack.topic,
        mock: &mock,
        spool_dir,
        spool: SPOOL,
        server: "",
    };
    let (port_a, port_b) = (free_port(), free_port());
    let gateway_a =
        ChildGateway::start_as(&config(&spool_a), &scratch, "gateway-a", "replica-a", port_a).await;
    let mut gateway_b =
        ChildGateway::start_as(&config(&spool_b), &scratch, "gateway-b", "replica-b", port_b).await;
    let lb = LoadBalancer::start(&[port_a, port_b]);
    let (addr_a, addr_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));

    let stop = Rc::new(Cell::new(false));
    let sent = Rc::new(RefCell::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| actix_web::rt::spawn(client(lb.url.clone(), id, stop.clone(), sent.clone())))
        .collect();
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;

    // B dies, as a machine or an OOM kill would end it: nothing flushed, its spool as the kill left it.
    let killed = epoch_now();
    kill9(&mut gateway_b.child);
    let dead = epoch_now();
    let spooled_at_kill = spool_bytes(&spool_b);
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;

    // Back on its port and spool, still under load; traffic returns to it once nginx's fail_timeout (2 s) passed.
    let restarting = epoch_now();
    gateway_b.restart().await;
    let restarted = epoch_now();
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    stop.set(true);
    for client in clients {
        client.await.unwrap();
    }
    let sent = sent.borrow().clone();
    // nginx writes a request's log line when it ends; every client has its answer by now.
    let logged = lb.access_log();

    // (a) Nothing started after the kill failed; what B held at the kill instant may have.
    let before: Vec<&Sent> = sent.iter().filter(|s| s.ended <= killed).collect();
    let in_flight: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.started < dead && s.ended > killed)
        .collect();
    let after: Vec<&Sent> = sent.iter().filter(|s| s.started >= dead).collect();
    let failed_in_flight = in_flight.iter().filter(|s| s.status != 200).count();
    let failed_after: Vec<&&Sent> = after.iter().filter(|s| s.status != 200).collect();
    println!(
        "requests: {} in all, {} before the kill, {} in flight at it ({failed_in_flight} of them failed), {} after it",
        sent.len(),
        before.len(),
        in_flight.len(),
        after.len()
    );
    assert!(
        before.iter().all(|s| s.status == 200),
        "a request failed before the kill: {:?}\n{}",
        before.iter().find(|s| s.status != 200),
        lb.error_log()
    );
    assert!(
        failed_after.is_empty(),
        "{} requests started after the kill failed, e.g. {:?}\nnginx: {}",
        failed_after.len(),
        failed_after.first(),
        lb.error_log()
    );

    // (b) Traffic left B at once: no request started after the kill ended at B before it was back, and none took
    // long. nginx's clock is the same wall clock; its times have millisecond resolution.
    let ended_at_dead_b: Vec<&Logged> = logged
        .iter()
        .filter(|l| l.last_upstream() == addr_b && l.ended > killed && l.ended < restarting)
        .collect();
    let late = ended_at_dead_b.iter().find(|l| l.started() > dead + 0.005);
    assert!(
        late.is_none(),
        "a request that started after the kill ended at the dead replica: {late:?}"
    );
    let last_at_b = logged
        .iter()
        .filter(|l| l.last_upstream() == addr_b && l.ended < restarting)
        .map(|l| l.ended)
        .fold(f64::MIN, f64::max);
    let left_after = (last_at_b - killed).max(0.0);
    assert!(
        left_after < MAX_LATENCY.as_secs_f64(),
        "the last request ended at B {left_after:.3} s after the kill"
    );
    let tried_dead_b = logged
        .iter()
        .filter(|l| l.ended > dead && l.ended < restarted)
        .map(|l| l.upstreams.iter().filter(|u| **u == addr_b).count())
        .sum::<usize>();
    let retried = logged
        .iter()
        .filter(|l| l.ended > dead && l.upstreams.len() > 1)
        .count();
    let mut usual: Vec<Duration> = before.iter().map(|s| s.latency).collect();
    usual.sort();
    let median = usual[usual.len() / 2];
    let slowest = after.iter().map(|s| s.latency).max().unwrap();
    println!(
        "traffic left B {:.0} ms after the kill (its last request ended then); nginx tried the dead B {tried_dead_b} \
         times ({retried} requests went on to A after it refused them); latency after the kill: max {} ms against \
         a median of {} ms before it (+{} ms)",
        left_after * 1000.0,
        slowest.as_millis(),
        median.as_millis(),
        slowest.saturating_sub(median).as_millis()
    );
    assert!(
        slowest < MAX_LATENCY,
        "a request started after the kill took {slowest:?}"
    );
    let served_by = |addr: &str, from: f64| {
        logged
            .iter()
            .filter(|l| l.status == 200 && l.last_upstream() == addr && l.ended > from)
            .count()
    };
    println!(
        "served: A {} and B {} before the kill; B {} after its restart",
        logged
            .iter()
            .filter(|l| l.status == 200 && l.last_upstream() == addr_a && l.ended <= killed)
            .count(),
        logged
            .iter()
            .filter(|l| l.status == 200 && l.last_upstream() == addr_b && l.ended <= killed)
            .count(),
        served_by(&addr_b, restarted)
    );
    assert!(
        served_by(&addr_a, 0.0) > 0 && served_by(&addr_b, 0.0) > 0,
        "both replicas served"
    );

    // (c) The restarted B drained what its spool held.
    eventually(
        "B's spool to be empty",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || gateway_b.metric("tollgate_spool_bytes").await == 0.0 && spool_bytes(&spool_b) == 0,
    )
    .await;
    let text = gateway_b.metrics().await;
    let drained = sample(&text, "tollgate_spool_drained_total").unwrap_or(0.0);
    let recovered = gateway_b.log_text().contains("from an earlier run");
    println!(
        "B's spool held {spooled_at_kill} bytes at the kill; after the restart it {}, {drained} events drained",
        if recovered {
            "found events from the earlier run"
        } else {
            "was empty"
        }
    );

    // (d) One row per answered request, those B answered just before it died included.
    let answered: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    assert!(
        answered.iter().all(|s| !s.request_id.is_empty()),
        "every answer has an x-request-id"
    );
    let at_b_near_kill = {
        let at_b: HashSet<&str> = logged
            .iter()
            .filter(|l| l.last_upstream() == addr_b && l.ended <= dead + 0.005 && l.ended > killed - 1.0)
            .map(|l| l.request_id.as_str())
            .collect();
        answered
            .iter()
            .filter(|s| at_b.contains(s.request_id.as_str()))
            .count()
    };
    let required_ids: HashSet<&str> = answered.iter().map(|s| s.request_id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = ledger_rows(&stack).await;
        // Past the deadline, the assertions below name what is missing.
        if required_ids.iter().all(|id| rows.contains_key(*id)) || Instant::now() >= deadline {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    // A late duplicate would arrive now.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let rows = ledger_rows(&stack).await;
    let missing: Vec<&&str> = required_ids
        .iter()
        .filter(|id| !rows.contains_key(**id))
        .collect();
    let doubled: Vec<(&String, &u64)> = rows.iter().filter(|(_, n)| **n > 1).collect();
    let answered_ids: HashSet<&str> = answered.iter().map(|s| s.request_id.as_str()).collect();
    let unanswered_rows = rows
        .keys()
        .filter(|id| !answered_ids.contains(id.as_str()))
        .count();
    println!(
        "ledger: {} rows for {} answered requests ({at_b_near_kill} of them answered by B in the last second before \
         the kill); {} missing, {} doubled; {unanswered_rows} rows for requests that failed (settled by B before it \
         died)",
        rows.values().sum::<u64>(),
        answered.len(),
        missing.len(),
        doubled.len()
    );
    assert!(
        missing.is_empty(),
        "{} answered requests have no row, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(doubled.is_empty(), "request ids with two rows: {doubled:?}");
    assert!(
        unanswered_rows <= failed_in_flight,
        "{unanswered_rows} rows for requests no client saw answered, but only {failed_in_flight} failed"
    );

    drop(lb);
    drop(gateway_b);
    drop(gateway_a);
    drop(billing);
    stack.stop().await;
    let _ = std::fs::remove_dir_all(scratch);
}
