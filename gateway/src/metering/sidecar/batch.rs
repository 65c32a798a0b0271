//! Coalesced prompt estimates: the requests of one worker that need meter-sidecar at the same moment share one
//! `POST /v1/tokens/count/batch` call instead of one HTTP exchange each.
//!
//! In: a request's count items, already serialised (`{"model": …, "messages": …}` or `{"model": …, "text": …}`).
//! Out: each item's count, or why there is none. At most one call per worker is in flight: while it is, new
//! requests queue, and the next call takes the whole queue (up to [`MAX_BATCH_ITEMS`]). An idle worker's request
//! goes out on the event loop's next turn, with whatever else asked in the same turn — nothing waits for a batch
//! to fill, so coalescing adds no latency at low load and saves the sidecar round trip's fixed cost (two HTTP
//! parses, the syscalls, the wake-ups) on every request but one per call at high load.
//!
//! A worker is one thread (awc clients are not `Send`), so the queue is an `Rc<RefCell<…>>` never borrowed across
//! an await. A request that stops waiting (its estimate's time budget ran out) leaves its items in the call; their
//! answer is dropped.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::metrics as m;

/// Items in one call at most: far below meter-sidecar's default `max_batch_items` (1024).
pub const MAX_BATCH_ITEMS: usize = 256;

/// An item's count, `None` when meter-sidecar could not count that item.
pub type Counts = Vec<Option<u32>>;

/// One worker's queue of count items and its single caller.
pub struct Batcher {
    shared: Rc<Shared>,
    budget: Duration,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("url", &self.shared.url)
            .field("queued", &self.shared.queue.borrow().jobs.len())
            .finish()
    }
}

struct Shared {
    client: awc::Client,
    url: String,
    queue: RefCell<Queue>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Whether a call is in flight (its task takes the queue when it returns).
    calling: bool,
}

/// One request's items.
struct Job {
    /// The items' JSON, comma-separated.
    items: Vec<u8>,
    count: usize,
    reply: oneshot::Sender<Result<Counts, &'static str>>,
}

#[derive(Deserialize)]
struct BatchResponse {
    results: Vec<BatchResult>,
}

#[derive(Deserialize)]
struct BatchResult {
    tokens: Option<u32>,
}

impl Batcher {
    /// A batcher calling `url`; `budget` bounds a request's wait, queueing included.
    pub fn new(client: awc::Client, url: String, budget: Duration) -> Self {
        Self {
            shared: Rc::new(Shared {
                client,
                url,
                queue: RefCell::new(Queue::default()),
            }),
            budget,
        }
    }

    /// Counts `count` items (`items`: their JSON, comma-separated) in the next call, and answers each item's
    /// count in order; an error names why there is no answer at all.
    pub async fn count(&self, items: Vec<u8>, count: usize) -> Result<Counts, &'static str> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.shared.queue.borrow_mut();
            queue.jobs.push_back(Job { items, count, reply });
            !std::mem::replace(&mut queue.calling, true)
        };
        if start {
            tokio::task::spawn_local(self.shared.clone().call_until_empty());
        }
        match tokio::time::timeout(self.budget, answer).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(_)) => Err("send"),
            Err(_) => Err("timeout"),
        }
    }
}

impl Shared {
    /// Sends the queue, call after call, until it is empty.
    async fn call_until_empty(self: Rc<Self>) {
        loop {
            let jobs = self.take();
            if jobs.is_empty() {
                return;
            }
            let items: usize = jobs.iter().map(|j| j.count).sum();
            metrics::histogram!(m::METER_BATCH_REQUESTS).record(jobs.len() as f64);
            let mut body = Vec::with_capacity(jobs.iter().map(|j| j.items.len() + 1).sum::<usize>() + 12);
            body.extend_from_slice(b"{\"items\":[");
            for (i, job) in jobs.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&job.items);
            }
            body.extend_from_slice(b"]}");
            match self.send(body, items).await {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for job in jobs {
                        let counts = results.by_ref().take(job.count).collect();
                        let _ = job.reply.send(Ok(counts));
                    }
                }
                Err(reason) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(reason));
                    }
                }
            }
        }
    }

    /// Takes queued jobs up to [`MAX_BATCH_ITEMS`] items (a larger single job goes alone); when none are left,
    /// ends the call turn, so the next request starts one.
    fn take(&self) -> Vec<Job> {
        let mut queue = self.queue.borrow_mut();
        let mut jobs = Vec::new();
        let mut items = 0;
        while let Some(job) = queue.jobs.front() {
            if !jobs.is_empty() && items + job.count > MAX_BATCH_ITEMS {
                break;
            }
            items += job.count;
            jobs.extend(queue.jobs.pop_front());
        }
        if jobs.is_empty() {
            queue.calling = false;
        }
        jobs
    }

    async fn send(&self, body: Vec<u8>, items: usize) -> Result<Counts, &'static str> {
        let mut response = self
            .client
            .post(&self.url)
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .map_err(super::send_error)?;
        if !response.status().is_success() {
            return Err("status");
        }
        let body: BatchResponse = response.json().limit(1 << 20).await.map_err(|_| "body")?;
        if body.results.len() != items {
            return Err("body");
        }
        Ok(body.results.into_iter().map(|r| r.tokens).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_web::{App, HttpResponse, HttpServer, web};
    use futures_util::future::join_all;
    use serde_json::{Value, json};

    use super::*;

    /// A stand-in for meter-sidecar's batch endpoint: each item's count is the length of its `text`, an item
    /// whose text is `"bad"` fails; `delay` slows every call. Records the items of every call.
    struct FakeSidecar {
        url: String,
        calls: Arc<std::sync::Mutex<Vec<usize>>>,
        status: Arc<AtomicUsize>,
    }

    fn fake_sidecar(delay: Duration) -> FakeSidecar {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = Arc::new(AtomicUsize::new(200));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/tokens/count/batch", listener.local_addr().unwrap());
        let (seen, answer) = (calls.clone(), status.clone());
        let server = HttpServer::new(move || {
            let (seen, answer) = (seen.clone(), answer.clone());
            App::new().route(
                "/v1/tokens/count/batch",
                web::post().to(move |body: web::Json<Value>| {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    async move {
                        tokio::time::sleep(delay).await;
                        let items = body["items"].as_array().cloned().unwrap_or_default();
                        seen.lock().unwrap().push(items.len());
                        let results: Vec<Value> = items
                            .iter()
                            .map(|item| match item["text"].as_str() {
                                Some("bad") => json!({"error": {"message": "no"}}),
                                Some(text) => json!({"tokens": text.len()}),
                                None => json!({"tokens": 0}),
                            })
                            .collect();
                        let status = u16::try_from(answer.load(Ordering::SeqCst)).unwrap();
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                            .json(json!({ "results": results }))
                    }
                }),
            )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FakeSidecar { url, calls, status }
    }

    fn batcher(url: &str, budget: Duration) -> Batcher {
        Batcher::new(awc::Client::default(), url.to_owned(), budget)
    }

    fn items(texts: &[&str]) -> (Vec<u8>, usize) {
        let json: Vec<String> = texts
            .iter()
            .map(|t| json!({"model": "m", "text": t}).to_string())
            .collect();
        (json.join(",").into_bytes(), texts.len())
    }

    #[actix_rt::test]
    async fn concurrent_requests_share_calls_and_each_gets_its_own_counts() {
        let sidecar = fake_sidecar(Duration::from_millis(20));
        let batcher = batcher(&sidecar.url, Duration::from_secs(5));
        let texts: Vec<String> = (0..40).map(|i| "x".repeat(i + 1)).collect();
        let asks = texts.iter().enumerate().map(|(i, text)| {
            // Every fifth request brings two items.
            let (json, n) = if i % 5 == 0 {
                items(&[text.as_str(), "ab"])
            } else {
                items(&[text.as_str()])
            };
            batcher.count(json, n)
        });
        let answers = join_all(asks).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let expected: Counts = if i % 5 == 0 {
                vec![Some(i as u32 + 1), Some(2)]
            } else {
                vec![Some(i as u32 + 1)]
            };
            assert_eq!(answer.unwrap(), expected, "request {i}");
        }
        let calls = sidecar.calls.lock().unwrap().clone();
        // All asked in the same turn of the worker's event loop: one call carries every item, in order.
        assert_eq!(calls, vec![48]);
    }

    #[actix_rt::test]
    async fn an_idle_worker_sends_at_once_and_a_call_never_exceeds_the_bound() {
        let sidecar = fake_sidecar(Duration::from_millis(10));
        let batcher = batcher(&sidecar.url, Duration::from_secs(5));
        assert_eq!(batcher.count(items(&["abc"]).0, 1).await.unwrap(), vec![Some(3)]);
        let many: Vec<_> = (0..MAX_BATCH_ITEMS + 10).map(|_| items(&["a"])).collect();
        let answers = join_all(many.into_iter().map(|(json, n)| batcher.count(json, n))).await;
        assert!(answers.iter().all(|a| a.as_ref().unwrap() == &vec![Some(1)]));
        let calls = sidecar.calls.lock().unwrap().clone();
        assert_eq!(calls[0], 1);
        assert!(calls.iter().all(|&n| n <= MAX_BATCH_ITEMS), "{calls:?}");
        assert_eq!(calls.iter().sum::<usize>(), 1 + MAX_BATCH_ITEMS + 10);
    }

    #[actix_rt::test]
    async fn an_item_the_sidecar_cannot_count_fails_alone() {
        let sidecar = fake_sidecar(Duration::ZERO);
        let batcher = batcher(&sidecar.url, Duration::from_secs(5));
        let (bad, good) = futures_util::join!(
            batcher.count(items(&["a", "bad"]).0, 2),
            batcher.count(items(&["abcd"]).0, 1)
        );
        assert_eq!(bad.unwrap(), vec![Some(1), None]);
        assert_eq!(good.unwrap(), vec![Some(4)]);
    }

    #[actix_rt::test]
    async fn a_failed_call_fails_every_request_in_it_and_the_next_call_starts_afresh() {
        let sidecar = fake_sidecar(Duration::from_millis(10));
        let batcher = batcher(&sidecar.url, Duration::from_secs(5));
        sidecar.status.store(503, Ordering::SeqCst);
        let answers = join_all((0..5).map(|_| batcher.count(items(&["a"]).0, 1))).await;
        assert!(answers.iter().all(|a| *a == Err("status")), "{answers:?}");
        sidecar.status.store(200, Ordering::SeqCst);
        assert_eq!(batcher.count(items(&["ab"]).0, 1).await.unwrap(), vec![Some(2)]);
    }

    #[actix_rt::test]
    async fn a_request_stops_waiting_when_its_budget_runs_out_and_an_unreachable_sidecar_fails_fast() {
        let sidecar = fake_sidecar(Duration::from_millis(500));
        let slow = batcher(&sidecar.url, Duration::from_millis(50));
        let started = std::time::Instant::now();
        assert_eq!(slow.count(items(&["a"]).0, 1).await, Err("timeout"));
        assert!(started.elapsed() < Duration::from_millis(400));

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = batcher(
            &format!("http://127.0.0.1:{port}/v1/tokens/count/batch"),
            Duration::from_secs(5),
        );
        let asked = Cell::new(0);
        for _ in 0..3 {
            asked.set(asked.get() + 1);
            assert_eq!(down.count(items(&["a"]).0, 1).await, Err("connect"));
        }
        assert_eq!(asked.get(), 3);
    }
}
