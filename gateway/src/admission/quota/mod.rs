//! Token quotas: admission against the shared view of usage that billing-consumer computes from the event log.
//!
//! Every configured token limit is a **scope** ([`QuotaScope`]) with a book of this replica's usage that no
//! snapshot counts yet. A request is admitted when, for every scope it falls in,
//!
//! ```text
//! snapshot.used + own pending + estimate ≤ limit
//! ```
//!
//! where `snapshot.used` comes from the newest [`QuotaSnapshot`] in the moka cache (fed by [`feed`]), `own
//! pending` sums this replica's reservations and settled requests the snapshot does not cover yet, and the
//! estimate is the prompt estimate plus `max_tokens` when the request gives one (`quota.reserve_max_tokens`).
//! The check and the reservation happen under the scope's lock, so concurrent requests on one replica cannot
//! all pass on the same remaining tokens.
//!
//! A request's reservation is one [`LocalUsage`]: it starts as the estimate, becomes the actual usage when the
//! request settles ([`QuotaTicket::settle`]), and learns from the event pump where in Kafka its event landed.
//! A snapshot covers it once the snapshot's watermark for this gateway and that partition reaches its offset;
//! then it leaves the book, because `snapshot.used` counts it. An event that never reaches Kafka is never
//! covered and stays counted locally until its window ends. Settled requests whose events Kafka acknowledged
//! and that no snapshot covered within [`FOLD_AFTER_MS`] are folded, per partition, into spans of
//! [`FOLD_SPAN_MS`] ([`Folded`]): however long billing-consumer's loop is away, a book holds the last few seconds
//! of requests and a few spans a second, not every request since the last snapshot.
//!
//! Scopes without an instance are checked at admission: the consumer's first, then the global ones, and the
//! first one used up answers 429 ([`QuotaRejection`]). Scopes with an instance — an instance's own quota, or a
//! consumer's share of one instance — are checked per attempt ([`Quotas::hold_instance`]): a used-up instance
//! is passed over for the next target, never a 429 while another target can serve.
//!
//! **Budgets** are scopes of the `spend` strategy ([`tollgate_schemas::budget`]): their book counts micro-units
//! of a currency instead of tokens. A request under a budget reserves the most it could cost — its prompt
//! estimate at the input price plus its output cap (`max_tokens`, else `[quota] budget_output_tokens`) at the
//! output price, plus the per-request fee, of the most expensive model its route could answer with, so that a
//! failover cannot overshoot ([`Quotas::demand`]) — and settles at the cost of the model that answered, priced
//! exactly as billing-consumer prices the event ([`QuotaTicket::settle_event`]). The most expensive is taken per
//! currency: a route whose models are priced in two currencies reserves, against each budget, the dearest of the
//! models priced in its currency (the others cost that budget nothing, as the ledger counts them). A model with no price in force
//! cannot be admitted under a refusing budget (fail closed). A budget set to `alert` is counted, never refused.
//! Team and organisation budgets apply to every consumer whose team or organisation they name.
//!
//! Windows are aligned to the epoch (budgets' to calendar days, weeks and months in UTC, or one fixed window);
//! "now" comes from the injected [`Clock`], so tests cross windows without sleeping.

pub mod feed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use moka::sync::Cache;
use tollgate_schemas::budget::OnExceed;
use tollgate_schemas::pricing::{PriceTable, TokenUsage};
use tollgate_schemas::quota::{LimitStrategy, QuotaScope, QuotaSnapshot, Requester, Window};
use tollgate_schemas::usage::UsageRecorded;

use crate::clock::{Clock, wall_ms};
use crate::config::{Config, TokenLimit};

/// A request's usage as this replica knows it before billing-consumer counted it.
#[derive(Debug)]
pub struct LocalUsage {
    prompt: AtomicU64,
    completion: AtomicU64,
    /// Money: the reservation in each currency, then the cost of the answer in its currency (nothing when
    /// no budget counts the request, or the model that answered has no price).
    cost: ArcSwapOption<Costs>,
    /// The event time once the request settled; 0 while in flight (it then counts in the current window).
    settled_at_ms: AtomicU64,
    /// Where Kafka put its event: -1 until acknowledged.
    partition: AtomicI32,
    offset: AtomicI64,
}

impl LocalUsage {
    fn reserve(demand: &Demand) -> Self {
        let cost = match &demand.cost {
            Some(Reservation::Priced(costs)) => Some(Arc::new(costs.clone())),
            _ => None,
        };
        Self {
            prompt: AtomicU64::new(demand.prompt),
            completion: AtomicU64::new(demand.completion),
            cost: ArcSwapOption::new(cost),
            settled_at_ms: AtomicU64::new(0),
            partition: AtomicI32::new(-1),
            offset: AtomicI64::new(-1),
        }
    }

    /// Records where the broker stored this request's usage event.
    pub fn delivered(&self, partition: i32, offset: i64) {
        self.offset.store(offset, Ordering::Release);
        self.partition.store(partition, Ordering::Release);
    }

    /// What it counts in `scope`: tokens, or for a budget its cost when in the budget's currency.
    fn amount(&self, scope: &QuotaScope) -> u64 {
        match scope.strategy {
            LimitStrategy::Spend => self
                .cost
                .load()
                .as_deref()
                .map_or(0, |costs| costs.micros_in(scope.currency.as_deref())),
            tokens => tokens.tokens(
                self.prompt.load(Ordering::Acquire),
                self.completion.load(Ordering::Acquire),
            ),
        }
    }

    /// The start of the window it counts in; a request in flight counts in the current one.
    fn window_start(&self, scope: &QuotaScope, current: Window) -> u64 {
        match self.settled_at_ms.load(Ordering::Acquire) {
            0 => current.start_ms,
            at => scope.window_at(at).start_ms,
        }
    }

    /// Where Kafka put its event, once acknowledged.
    pub(crate) fn landed(&self) -> Option<(i32, i64)> {
        let partition = self.partition.load(Ordering::Acquire);
        (partition >= 0).then(|| (partition, self.offset.load(Ordering::Acquire)))
    }

    /// When it settled; `None` while in flight.
    fn settled_at(&self) -> Option<u64> {
        Some(self.settled_at_ms.load(Ordering::Acquire)).filter(|&at| at != 0)
    }
}

#[cfg(test)]
impl LocalUsage {
    /// An empty reservation.
    pub(crate) fn for_test() -> Self {
        Self::reserve(&Demand::default())
    }
}

/// What a request may consume, reserved at admission.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Demand {
    /// The prompt estimate.
    pub prompt: u64,
    /// `max_tokens` when given and reserved, else 0.
    pub completion: u64,
    /// The most it may cost, for budgets; `None` when no budget is configured.
    pub cost: Option<Reservation>,
}

/// Money in micro-units, per currency: one entry a currency (a route's models are rarely priced in more than
/// one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Costs(Vec<(Arc<String>, u64)>);

impl Costs {
    /// `micros` of `currency` alone.
    pub fn one(currency: &str, micros: u64) -> Self {
        Self(vec![(Arc::new(currency.to_owned()), micros)])
    }

    /// The amount in `currency`; 0 when there is none in it.
    pub fn micros_in(&self, currency: Option<&str>) -> u64 {
        self.0
            .iter()
            .find(|(held, _)| Some(held.as_str()) == currency)
            .map_or(0, |(_, micros)| *micros)
    }

    /// Raises the amount in `currency` to `micros` when it is less (or absent).
    fn raise(&mut self, currency: &str, micros: u64) {
        match self.0.iter_mut().find(|(held, _)| held.as_str() == currency) {
            Some((_, held)) => *held = (*held).max(micros),
            None => self.0.push((Arc::new(currency.to_owned()), micros)),
        }
    }
}

/// The money a request reserves under budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// At most this much in each currency: per currency, the cost at the dearest model of the route priced in it.
    Priced(Costs),
    /// `model`, which the route could answer with, has no price in force: no budget that refuses can admit it.
    Unpriced { model: String },
}

/// The `x-budget-*` figures: the budget closest to being spent, or the one that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetFigures {
    pub currency: String,
    pub limit_micros: u64,
    pub remaining_micros: u64,
    /// Until the period ends.
    pub reset: Duration,
}

/// The `x-ratelimit-*-tokens` figures, for the scope closest to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFigures {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window ends.
    pub reset: Duration,
}

/// A request refused because a scope is used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRejection {
    pub figures: TokenFigures,
    pub retry_after: Duration,
    pub status: u16,
    pub message: String,
    pub error_type: &'static str,
    /// `consumer` or `global`: a metric label.
    pub kind: &'static str,
    /// The scope's key, for the log line.
    pub scope: String,
    /// Of the tokens committed, those billing-consumer's snapshot counts, and those of this replica's requests
    /// it does not count yet (in flight, or settled since): for the log line.
    pub counted: u64,
    pub pending: u64,
    /// When a budget refused: its figures, for the `x-budget-*` headers (`figures` is then in micro-units).
    pub budget: Option<BudgetFigures>,
}

/// One scope and this replica's usage in it that no snapshot counts yet.
#[derive(Debug)]
struct ScopeBook {
    /// Swapped in place when a live change edits the limit (same scope, new figure or message), so tickets
    /// in flight keep settling into the same book.
    limit: ArcSwap<TokenLimit>,
    kind: &'static str,
    pending: Mutex<Pending>,
}

/// This replica's usage in one scope that no snapshot counts yet, and its running total.
///
/// Admission reads `total` (O(1)); reserving, releasing and settling keep it exact. The book itself is
/// recounted — entries a snapshot covers or whose window ended are dropped, acknowledged ones older than
/// [`FOLD_AFTER_MS`] folded into spans, the total summed again — when the window rolls over, when a snapshot
/// arrives, and at most every [`RECOUNT_INTERVAL_MS`] otherwise (an event acknowledged by Kafka after the
/// snapshot that counts it is dropped then; without a snapshot of the window, every [`FOLD_RECOUNT_INTERVAL_MS`]). A recount costs the last few seconds of requests plus the spans,
/// never the whole backlog.
#[derive(Debug, Default)]
struct Pending {
    /// Requests in flight, and settled ones no snapshot covers yet that are not folded.
    list: Vec<Arc<LocalUsage>>,
    /// Settled, acknowledged usage, in the order the spans were opened.
    folded: Vec<Folded>,
    /// Tokens of `list` and `folded` counted in the window starting at `window_start_ms`.
    total: u64,
    window_start_ms: u64,
    /// When the book was last recounted; 0 forces a recount.
    counted_at_ms: u64,
}

/// Settled requests of one window whose events landed in one partition, folded together: a snapshot covers the
/// span once its watermark for the partition reaches the span's highest offset. Until then the whole span
/// counts, so a span is at worst counted twice for the time it takes a snapshot to pass it — never missed.
#[derive(Debug, Clone, Copy)]
struct Folded {
    partition: i32,
    max_offset: i64,
    tokens: u64,
    window_start_ms: u64,
    /// When the span was opened: it takes new requests for [`FOLD_SPAN_MS`], then it is sealed.
    opened_at_ms: u64,
}

/// The longest an admission relies on the running total without recounting the book.
const RECOUNT_INTERVAL_MS: u64 = 100;

/// The longest the running total goes without a recount while no snapshot of the window is cached: such a
/// recount can only fold (the total is exact without it), and it walks the last [`FOLD_AFTER_MS`] of requests.
const FOLD_RECOUNT_INTERVAL_MS: u64 = 1_000;

/// How long a folded span takes new requests: bounds the spans to a few a second per partition.
const FOLD_SPAN_MS: u64 = 250;

/// How long after settling an acknowledged request is folded: far beyond the usual lag of billing-consumer's
/// snapshots, so while its loop keeps up every request is covered one by one, exactly, and folding (which counts
/// a span until a snapshot passes its last offset) only bounds the book while the loop is away or far behind.
const FOLD_AFTER_MS: u64 = 5_000;

impl Pending {
    /// Adds a settled, acknowledged request's `tokens` in `window_start_ms` to the partition's open span, or
    /// opens one. Spans are in opening order, so the search stops at the first sealed one.
    fn fold(&mut self, partition: i32, offset: i64, tokens: u64, window_start_ms: u64, now: u64) {
        let open = self
            .folded
            .iter_mut()
            .rev()
            .take_while(|span| now < span.opened_at_ms.saturating_add(FOLD_SPAN_MS))
            .find(|span| span.partition == partition && span.window_start_ms == window_start_ms);
        match open {
            Some(span) => {
                span.max_offset = span.max_offset.max(offset);
                span.tokens = span.tokens.saturating_add(tokens);
            }
            None => self.folded.push(Folded {
                partition,
                max_offset: offset,
                tokens,
                window_start_ms,
                opened_at_ms: now,
            }),
        }
    }
}

/// Locks every mutex of `mutexes` in one canonical order — by address — whatever order they are listed in, and
/// returns the guards in the listed order. Admissions and settlements lock several books at once, listed in the
/// order of a consumer's limits, which an admin change can reorder while tickets from before it still settle:
/// locking in listed order could then wait in a cycle. A poisoned lock is taken over as it is (nothing done under
/// these locks panics).
fn lock_all<'m, T>(mutexes: impl Iterator<Item = &'m Mutex<T>>) -> Vec<MutexGuard<'m, T>> {
    let mutexes: Vec<&Mutex<T>> = mutexes.collect();
    let mut order: Vec<usize> = (0..mutexes.len()).collect();
    order.sort_by_key(|&i| mutexes.get(i).map_or(0, |m| std::ptr::from_ref(*m).addr()));
    let mut guards: Vec<Option<MutexGuard<'m, T>>> = mutexes.iter().map(|_| None).collect();
    for i in order {
        if let (Some(mutex), Some(slot)) = (mutexes.get(i), guards.get_mut(i)) {
            *slot = Some(mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }
    guards.into_iter().flatten().collect()
}

impl ScopeBook {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing done under the lock panics (no indexing, no unwrap); a poisoned lock is taken over as it is.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `usage` out of the book (its request failed over or ended unsettled).
    fn remove(&self, usage: &Arc<LocalUsage>) {
        let scope = &self.limit().scope;
        let mut pending = self.lock();
        let before = pending.list.len();
        pending.list.retain(|u| !Arc::ptr_eq(u, usage));
        if pending.list.len() < before {
            pending.total = pending.total.saturating_sub(usage.amount(scope));
        }
    }

    fn limit(&self) -> Arc<TokenLimit> {
        self.limit.load_full()
    }
}

/// Which books apply to whom: rebuilt on every configuration change, reusing the book of every scope that
/// stays (its pending usage with it).
#[derive(Debug, Default)]
struct Layout {
    /// Admission-time scopes of each consumer, in configuration order.
    by_consumer: HashMap<String, Vec<Arc<ScopeBook>>>,
    /// Admission-time scopes over every consumer, in configuration order.
    global: Vec<Arc<ScopeBook>>,
    /// Budgets of teams and organisations, checked for every consumer they cover.
    teams: Vec<Arc<ScopeBook>>,
    /// Scopes tied to an instance, checked per attempt.
    per_instance: Vec<Arc<ScopeBook>>,
    by_key: HashMap<String, Arc<ScopeBook>>,
    /// True when some scope is a budget: admissions then price their reservation.
    has_budgets: bool,
}

impl Layout {
    fn new(config: &Config, previous: &Layout) -> Self {
        let mut layout = Layout::default();
        let consumer_limits = config
            .consumers
            .iter()
            .flat_map(|c| c.token_limits.iter().map(move |l| (Some(c.name.as_str()), l)));
        let global_limits = config.token_limits.iter().map(|l| (None, l));
        let instance_limits = config
            .instances
            .iter()
            .filter_map(|i| i.token_limit.as_ref())
            .map(|l| (None, l));
        let team_budgets = config
            .teams
            .iter()
            .flat_map(|t| t.budgets.iter().map(|l| (None, l)));
        let all = consumer_limits
            .chain(global_limits)
            .chain(instance_limits)
            .chain(team_budgets);
        for (consumer, limit) in all {
            let kind = match (&limit.budget, consumer) {
                (Some(_), _) => "budget",
                (None, Some(_)) => "consumer",
                (None, None) => "global",
            };
            layout.has_budgets |= limit.budget.is_some();
            let book = match previous.by_key.get(&limit.key) {
                Some(book) => {
                    book.limit.store(Arc::new(limit.clone()));
                    book.clone()
                }
                None => Arc::new(ScopeBook {
                    limit: ArcSwap::from_pointee(limit.clone()),
                    kind,
                    pending: Mutex::new(Pending::default()),
                }),
            };
            layout.by_key.insert(limit.key.clone(), book.clone());
            if limit.scope.instance.is_some() {
                layout.per_instance.push(book);
            } else if limit.scope.team.is_some() {
                layout.teams.push(book);
            } else if let Some(consumer) = consumer {
                layout
                    .by_consumer
                    .entry(consumer.to_owned())
                    .or_default()
                    .push(book);
            } else {
                layout.global.push(book);
            }
        }
        layout
    }
}

/// Where a scope stands now.
#[derive(Debug, Clone, Copy)]
struct Standing {
    window: Window,
    /// Counted by the snapshot (0 when the cached snapshot is of an earlier window).
    used: u64,
    /// This replica's usage the snapshot does not count.
    pending: u64,
}

/// Every scope, the snapshot cache and this replica's books.
#[derive(Debug)]
pub struct Quotas {
    /// This replica's CloudEvents `source`: the gateway name in snapshot watermarks.
    gateway: Arc<str>,
    clock: Arc<dyn Clock>,
    reserve_max_tokens: bool,
    /// Output tokens a budget reserves for a request that sets no `max_tokens`.
    budget_output_tokens: AtomicU64,
    layout: ArcSwap<Layout>,
    /// The prices budgets reserve and settle at.
    prices: ArcSwap<PriceTable>,
    /// By (scope key, window start): billing-consumer publishes each window of a scope as its own snapshot.
    snapshots: Cache<(String, u64), Arc<QuotaSnapshot>>,
    /// Wall-clock `published_at_ms` of the newest snapshot or heartbeat received; 0 before the first.
    heard_at_ms: AtomicU64,
}

/// Snapshots cached at most, one per (scope, window): far more than any configuration's scopes times the few
/// windows of each that are read.
const SNAPSHOT_CACHE_CAPACITY: u64 = 1 << 16;

impl Quotas {
    pub fn new(config: &Config, gateway: Arc<str>, clock: Arc<dyn Clock>) -> Self {
        Self {
            gateway,
            clock,
            reserve_max_tokens: config.quota.reserve_max_tokens,
            budget_output_tokens: AtomicU64::new(config.quota.budget_output_tokens),
            layout: ArcSwap::from_pointee(Layout::new(config, &Layout::default())),
            prices: ArcSwap::new(Arc::clone(&config.prices)),
            // LRU, not TinyLFU: a new window's snapshot must always be admitted, and the windows that ended (no
            // longer read) are the ones to go.
            snapshots: Cache::builder()
                .max_capacity(SNAPSHOT_CACHE_CAPACITY)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            heard_at_ms: AtomicU64::new(0),
        }
    }

    /// Takes the limits of a new configuration. A scope that stays keeps its book — the reservations and
    /// uncounted usage in it — and takes the new figure; a new scope starts empty (its snapshot, once
    /// billing-consumer computes it, brings the usage so far); a removed scope's book is dropped once the
    /// requests holding it finish.
    pub fn reconfigure(&self, config: &Config) {
        let layout = Layout::new(config, &self.layout.load());
        self.prices.store(Arc::clone(&config.prices));
        self.budget_output_tokens
            .store(config.quota.budget_output_tokens, Ordering::Release);
        self.layout.store(Arc::new(layout));
    }

    /// True when no token limit is configured: admission has nothing to check.
    pub fn is_empty(&self) -> bool {
        self.layout.load().by_key.is_empty()
    }

    /// What a request reserves: its prompt estimate, plus its `max_tokens` when configured to; and when budgets
    /// are configured, the most it could cost if answered by any of `models` (the models its route's targets
    /// answer with) — see the module docs.
    pub fn demand(&self, prompt_estimate: u32, max_output_tokens: Option<u64>, models: &[&str]) -> Demand {
        let prompt = u64::from(prompt_estimate);
        let cost = self.layout.load().has_budgets.then(|| {
            let output =
                max_output_tokens.unwrap_or_else(|| self.budget_output_tokens.load(Ordering::Acquire));
            self.most_expensive(prompt, output, models)
        });
        Demand {
            prompt,
            completion: max_output_tokens.filter(|_| self.reserve_max_tokens).unwrap_or(0),
            cost,
        }
    }

    /// The highest cost, in each currency, of `prompt` input and `output` output tokens (and the fee) over
    /// `models`, at the prices in force now; or the first model without a price.
    fn most_expensive(&self, prompt: u64, output: u64, models: &[&str]) -> Reservation {
        let prices = self.prices.load();
        let now = self.clock.now_ms();
        let usage = TokenUsage {
            prompt: u32::try_from(prompt).unwrap_or(u32::MAX),
            completion: u32::try_from(output).unwrap_or(u32::MAX),
            served: true,
            ..TokenUsage::default()
        };
        let mut most = Costs::default();
        for model in models {
            let charge = prices.charge(model, now, &usage);
            let Some(version) = charge.version else {
                return Reservation::Unpriced {
                    model: (*model).to_owned(),
                };
            };
            // Reasoning tokens are part of the output and may be dearer.
            let reasoning = TokenUsage {
                reasoning: Some(usage.completion),
                ..usage
            };
            let micros = charge
                .cost_micros
                .max(tollgate_schemas::pricing::cost_micros(version, &reasoning));
            most.raise(&version.currency, u64::try_from(micros).unwrap_or(u64::MAX));
        }
        Reservation::Priced(most)
    }

    /// Admits a request by `consumer` (without a team) for `model`; see [`Quotas::admit_for`].
    pub fn admit(
        &self,
        consumer: &str,
        model: &str,
        demand: Demand,
    ) -> Result<(QuotaTicket, Option<TokenFigures>), Box<QuotaRejection>> {
        self.admit_for(&Requester::consumer(consumer), model, demand)
    }

    /// Admits a request by `who` for `model` and reserves `demand` in every scope it falls in, or names the
    /// first used-up scope (the consumer's are checked before its teams' budgets and the global ones).
    pub fn admit_for(
        &self,
        who: &Requester<'_>,
        model: &str,
        demand: Demand,
    ) -> Result<(QuotaTicket, Option<TokenFigures>), Box<QuotaRejection>> {
        let now = self.clock.now_ms();
        let applies = |book: &&Arc<ScopeBook>| {
            let limit = book.limit();
            limit.scope.matches(who, model, "") && limit.scope.period.applies_at(now)
        };
        let layout = self.layout.load();
        let books: Vec<Arc<ScopeBook>> = layout
            .by_consumer
            .get(who.consumer)
            .into_iter()
            .flatten()
            .filter(applies)
            .chain(layout.teams.iter().filter(applies))
            .chain(layout.global.iter().filter(applies))
            .cloned()
            .collect();
        let usage = Arc::new(LocalUsage::reserve(&demand));
        let (figures, budget) = self
            .reserve(&books, &usage, &demand)
            .map_err(|(book, standing)| Box::new(self.rejection(book, standing, &demand)))?;
        let prices = books
            .iter()
            .any(|b| b.limit().budget.is_some())
            .then(|| self.prices.load_full());
        Ok((
            QuotaTicket {
                usage,
                books,
                attempt_books: Vec::new(),
                settled: false,
                prices,
                budget,
            },
            figures,
        ))
    }

    /// Reserves the ticket's demand on the scopes of `instance` (its own quota, the consumer's share of it);
    /// `Err` with the time until the used-up scope's window ends when the request must go elsewhere.
    pub fn hold_instance(
        &self,
        ticket: &mut QuotaTicket,
        consumer: &str,
        model: &str,
        instance: &str,
    ) -> Result<(), Duration> {
        ticket.release_attempt();
        let books: Vec<Arc<ScopeBook>> = self
            .layout
            .load()
            .per_instance
            .iter()
            .filter(|b| {
                b.limit()
                    .scope
                    .matches(&Requester::consumer(consumer), model, instance)
            })
            .cloned()
            .collect();
        if books.is_empty() {
            return Ok(());
        }
        let demand = Demand {
            prompt: ticket.usage.prompt.load(Ordering::Acquire),
            completion: ticket.usage.completion.load(Ordering::Acquire),
            cost: None,
        };
        match self.reserve(&books, &ticket.usage, &demand) {
            Ok(_) => {
                ticket.attempt_books = books;
                Ok(())
            }
            Err((_, standing)) => Err(standing.window.remaining(self.clock.now_ms())),
        }
    }

    /// Under the locks of every book (taken in a fixed order), checks that `demand` fits each and then adds
    /// `usage` to all of them; or returns the first book it does not fit. With the tightest token quota's
    /// figures and the tightest budget's.
    #[allow(clippy::type_complexity)]
    fn reserve<'b>(
        &self,
        books: &'b [Arc<ScopeBook>],
        usage: &Arc<LocalUsage>,
        demand: &Demand,
    ) -> Result<(Option<TokenFigures>, Option<BudgetFigures>), (&'b ScopeBook, Standing)> {
        if books.is_empty() {
            return Ok((None, None));
        }
        let now = self.clock.now_ms();
        let mut guards = lock_all(books.iter().map(|b| &b.pending));
        let mut tightest: Option<TokenFigures> = None;
        let mut budget: Option<BudgetFigures> = None;
        let mut needs = Vec::with_capacity(books.len());
        for (book, pending) in books.iter().zip(guards.iter_mut()) {
            let limit = book.limit();
            let refuses = limit
                .budget
                .as_ref()
                .is_none_or(|b| b.on_exceed == OnExceed::Refuse);
            let need = demand_of(&limit, demand, refuses);
            // An unpriced model is refused under a refusing budget, and reserves nothing elsewhere.
            needs.push(if need == u64::MAX { 0 } else { need });
            let fits = |standing: &Standing| {
                !refuses
                    || standing
                        .used
                        .saturating_add(standing.pending)
                        .saturating_add(need)
                        <= limit.limit
            };
            let mut standing = self.standing(book, pending, now);
            if !fits(&standing) && now > pending.counted_at_ms {
                // Before refusing, the book is recounted against the cached snapshot: between recounts the running
                // total still holds requests whose events Kafka acknowledged after the snapshot that counts them
                // arrived, and a refusal must not rest on counting those twice. At most once a millisecond, so a
                // client hammering a used-up quota does not recount the book on every request.
                pending.counted_at_ms = 0;
                standing = self.standing(book, pending, now);
            }
            if !fits(&standing) {
                return Err((book, standing));
            }
            let committed = standing.used.saturating_add(standing.pending);
            let remaining = limit.limit.saturating_sub(committed).saturating_sub(need);
            let reset = standing.window.remaining(now);
            match &limit.budget {
                Some(terms) => {
                    if budget.as_ref().is_none_or(|b| remaining < b.remaining_micros) {
                        budget = Some(BudgetFigures {
                            currency: terms.currency.clone(),
                            limit_micros: limit.limit,
                            remaining_micros: remaining,
                            reset,
                        });
                    }
                }
                None => {
                    if tightest.is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(TokenFigures {
                            limit: limit.limit,
                            remaining,
                            reset,
                        });
                    }
                }
            }
        }
        for (pending, need) in guards.iter_mut().zip(needs) {
            pending.list.push(usage.clone());
            pending.total = pending.total.saturating_add(need);
        }
        Ok((tightest, budget))
    }

    fn rejection(&self, book: &ScopeBook, standing: Standing, demand: &Demand) -> QuotaRejection {
        let now = self.clock.now_ms();
        let committed = standing.used.saturating_add(standing.pending);
        let reset = standing.window.remaining(now);
        let limit = book.limit();
        let remaining = limit.limit.saturating_sub(committed);
        let (message, budget) = match &limit.budget {
            None => (limit.rejected_msg.clone(), None),
            Some(terms) => {
                let money = |micros: u64| {
                    tollgate_schemas::prices::format_micros(i64::try_from(micros).unwrap_or(i64::MAX))
                };
                let message = match &demand.cost {
                    Some(Reservation::Unpriced { model }) => format!(
                        "Model `{model}` has no price in force, so no request under budget `{}` can be admitted \
                         for it: the operator must price it first.",
                        limit.id
                    ),
                    _ => format!(
                        "{} ({} {currency} left, {} {currency} needed for this request); it resets at {}.",
                        limit.rejected_msg,
                        money(remaining),
                        money(demand_of(&limit, demand, true)),
                        tollgate_schemas::quota::rfc3339(standing.window.end_ms),
                        currency = terms.currency,
                    ),
                };
                let figures = BudgetFigures {
                    currency: terms.currency.clone(),
                    limit_micros: limit.limit,
                    remaining_micros: remaining,
                    reset,
                };
                (message, Some(figures))
            }
        };
        QuotaRejection {
            figures: TokenFigures {
                limit: limit.limit,
                remaining,
                reset,
            },
            retry_after: reset.max(Duration::from_secs(1)),
            status: limit.rejected_code,
            message,
            error_type: limit.rejected_type,
            kind: book.kind,
            scope: limit.key.clone(),
            counted: standing.used,
            pending: standing.pending,
            budget,
        }
    }

    /// Where `book` stands at `now`: the snapshot's count of its current window, and this replica's usage it does
    /// not cover (the running total, recounted when due — see [`Pending`]).
    fn standing(&self, book: &ScopeBook, pending: &mut Pending, now: u64) -> Standing {
        let limit = book.limit();
        let scope = &limit.scope;
        let window = scope.window_at(now);
        let snapshot = self.snapshots.get(&(limit.key.clone(), window.start_ms));
        // Without a snapshot of this window nothing can be covered: the recount only folds, and may wait longer.
        let interval = if snapshot.is_some() {
            RECOUNT_INTERVAL_MS
        } else {
            FOLD_RECOUNT_INTERVAL_MS
        };
        let due = pending.window_start_ms != window.start_ms
            || now.saturating_sub(pending.counted_at_ms) >= interval;
        if due {
            let covered = |partition: i32, offset: i64| {
                snapshot
                    .as_deref()
                    .is_some_and(|s| s.covers(&self.gateway, partition, offset))
            };
            let mut total = 0u64;
            let mut list = std::mem::take(&mut pending.list);
            list.retain(|usage| {
                let start = usage.window_start(scope, window);
                if start < window.start_ms {
                    return false;
                }
                let in_window = start == window.start_ms;
                let foldable = in_window
                    && usage
                        .settled_at()
                        .is_some_and(|at| now.saturating_sub(at) >= FOLD_AFTER_MS);
                match usage.landed() {
                    Some((partition, offset)) if in_window && covered(partition, offset) => false,
                    Some((partition, offset)) if foldable => {
                        pending.fold(partition, offset, usage.amount(scope), start, now);
                        false
                    }
                    _ => {
                        if in_window {
                            total = total.saturating_add(usage.amount(scope));
                        }
                        true
                    }
                }
            });
            pending.list = list;
            pending.folded.retain(|span| {
                span.window_start_ms >= window.start_ms && !covered(span.partition, span.max_offset)
            });
            pending.total = pending
                .folded
                .iter()
                .filter(|span| span.window_start_ms == window.start_ms)
                .map(|span| span.tokens)
                .fold(total, u64::saturating_add);
            pending.window_start_ms = window.start_ms;
            pending.counted_at_ms = now.max(1);
        }
        Standing {
            window,
            used: snapshot.map_or(0, |s| s.used),
            pending: pending.total,
        }
    }

    /// Takes a snapshot from the quota topic into the cache under its scope and window (scopes this gateway does
    /// not enforce are ignored) and drops from the scope's book what it covers.
    ///
    /// A snapshot whose watermarks go back — for some gateway and partition it covers less than the snapshot of
    /// the same window already held — is ignored ([`Acceptance::Regressed`]): it comes from a second or stale
    /// quota loop, and taking it would drop from the book usage it does not count (counted zero times). Called
    /// from the feed's one thread, so the check and the insert cannot interleave with another snapshot's.
    pub fn accept(&self, snapshot: QuotaSnapshot) -> Acceptance {
        self.heard(snapshot.published_at_ms);
        let Some(book) = self.layout.load().by_key.get(&snapshot.scope).cloned() else {
            return Acceptance::NotEnforced;
        };
        let key = (snapshot.scope.clone(), snapshot.window_start_ms);
        if let Some(held) = self.snapshots.get(&key)
            && regresses(&held, &snapshot)
        {
            return Acceptance::Regressed;
        }
        // Cache first, prune second: in between, an admission may count an event twice (safe), never zero times.
        self.snapshots.insert(key, Arc::new(snapshot));
        let now = self.clock.now_ms();
        let mut pending = book.lock();
        pending.counted_at_ms = 0;
        self.standing(&book, &mut pending, now);
        Acceptance::Taken
    }

    /// Notes a sign of life from billing-consumer's quota loop.
    pub fn heard(&self, published_at_ms: u64) {
        self.heard_at_ms.fetch_max(published_at_ms, Ordering::AcqRel);
    }

    /// How long since billing-consumer's quota loop was last heard of; `None` before it ever was.
    pub fn staleness(&self) -> Option<Duration> {
        match self.heard_at_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(wall_ms().saturating_sub(at))),
        }
    }

    /// Where every scope stands now, as this replica sees it: one pass over the books.
    pub fn scopes(&self) -> Vec<ScopeStanding> {
        let now = self.clock.now_ms();
        self.layout
            .load()
            .by_key
            .values()
            .map(|book| {
                let standing = self.standing(book, &mut book.lock(), now);
                let limit = book.limit();
                let used = standing.used.saturating_add(standing.pending);
                ScopeStanding {
                    id: limit.id.clone(),
                    currency: limit.budget.as_ref().map(|b| b.currency.clone()),
                    remaining: limit.limit.saturating_sub(used),
                    pending: standing.pending,
                }
            })
            .collect()
    }

    /// Where each token quota that applies to `consumer`'s requests stands now, as this replica sees it: the
    /// consumer's own, then the global ones (an instance's quota is left out: it fails a request over, never
    /// refuses it). For the usage API.
    pub fn standing_of(&self, who: &Requester<'_>) -> Vec<QuotaStanding> {
        let layout = self.layout.load();
        let applies = |book: &&Arc<ScopeBook>| book.limit().scope.matches(who, "", "");
        let books = layout
            .by_consumer
            .get(who.consumer)
            .into_iter()
            .flatten()
            .chain(layout.teams.iter().filter(applies))
            .chain(&layout.global);
        self.standings(books)
    }

    /// Where the budgets set on `team` (a team or an organisation) stand now, as this replica sees it.
    pub fn standing_of_team(&self, team: &str) -> Vec<QuotaStanding> {
        let layout = self.layout.load();
        let books = layout
            .teams
            .iter()
            .filter(|book| book.limit().scope.team.as_deref() == Some(team));
        self.standings(books)
    }

    fn standings<'b>(&self, books: impl Iterator<Item = &'b Arc<ScopeBook>>) -> Vec<QuotaStanding> {
        let now = self.clock.now_ms();
        books
            .map(|book| {
                let standing = self.standing(book, &mut book.lock(), now);
                let limit = book.limit();
                let used = standing.used.saturating_add(standing.pending);
                QuotaStanding {
                    id: limit.id.clone(),
                    kind: book.kind,
                    currency: limit.budget.as_ref().map(|b| b.currency.clone()),
                    models: limit.scope.models.clone(),
                    strategy: limit.scope.strategy.as_str(),
                    limit: limit.limit,
                    used,
                    remaining: limit.limit.saturating_sub(used),
                    window_start_ms: standing.window.start_ms,
                    window_end_ms: standing.window.end_ms,
                }
            })
            .collect()
    }

    /// Tokens this replica holds in its books that no snapshot counts yet, over every scope.
    pub fn pending_tokens(&self) -> u64 {
        self.scopes()
            .iter()
            .filter(|s| s.currency.is_none())
            .map(|s| s.pending)
            .fold(0, u64::saturating_add)
    }
}

/// What `demand` needs of `limit`'s book: its tokens, or for a budget the money reserved when in the budget's
/// currency (`u64::MAX` for an unpriced model when the budget refuses: it can never fit).
fn demand_of(limit: &TokenLimit, demand: &Demand, refuses: bool) -> u64 {
    match limit.scope.strategy {
        LimitStrategy::Spend => match &demand.cost {
            Some(Reservation::Priced(costs)) => costs.micros_in(limit.scope.currency.as_deref()),
            Some(Reservation::Unpriced { .. }) if refuses => u64::MAX,
            Some(Reservation::Unpriced { .. }) | None => 0,
        },
        tokens => tokens.tokens(demand.prompt, demand.completion),
    }
}

/// What [`Quotas::accept`] did with a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Cached: admissions use it from now on.
    Taken,
    /// Of a scope this gateway does not enforce.
    NotEnforced,
    /// Ignored: its watermarks go back from the snapshot of the same window already held.
    Regressed,
}

/// Whether `newer` covers less than `held` for some gateway and partition `held` names (a watermark lower, or
/// missing).
fn regresses(held: &QuotaSnapshot, newer: &QuotaSnapshot) -> bool {
    held.watermarks
        .iter()
        .any(|mark| !newer.covers(&mark.gateway, mark.partition, mark.offset))
}

/// One token quota's standing for one consumer, as the usage API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuotaStanding {
    /// The limit's id.
    pub id: String,
    /// `consumer` (its own token quota), `global`, or `budget` (its own, its team's or its organisation's).
    pub kind: &'static str,
    /// For a budget, the currency `limit`, `used` and `remaining` are micro-units of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The requested models it counts; every model when empty.
    pub models: Vec<String>,
    /// What it counts: `total_tokens`, `prompt_tokens`, `completion_tokens`, or `spend` for a budget.
    pub strategy: &'static str,
    pub limit: u64,
    /// Counted by billing-consumer's snapshot, plus this replica's usage it does not count yet.
    pub used: u64,
    pub remaining: u64,
    /// The current window, Unix epoch milliseconds (the end excluded): when `remaining` resets.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

/// One scope's standing, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeStanding {
    /// The limit's id.
    pub id: String,
    /// For a budget, its currency: `remaining` and `pending` are micro-units of it.
    pub currency: Option<String>,
    /// Tokens left in the current window (snapshot plus this replica's uncounted usage taken off).
    pub remaining: u64,
    /// This replica's usage no snapshot counts yet.
    pub pending: u64,
}

/// A request's reservations; settled with its actual usage, or released when dropped unsettled.
#[derive(Debug)]
pub struct QuotaTicket {
    usage: Arc<LocalUsage>,
    books: Vec<Arc<ScopeBook>>,
    /// The current attempt's instance scopes.
    attempt_books: Vec<Arc<ScopeBook>>,
    settled: bool,
    /// The prices at admission, when a budget counts the request: its cost is priced with them.
    prices: Option<Arc<PriceTable>>,
    /// The tightest budget's figures at admission, for the `x-budget-*` headers.
    budget: Option<BudgetFigures>,
}

impl QuotaTicket {
    /// Gives back the reservation on the current attempt's instance (the request fails over elsewhere).
    pub fn release_attempt(&mut self) {
        for book in self.attempt_books.drain(..) {
            book.remove(&self.usage);
        }
    }

    /// The tightest budget's figures at admission, when a budget counts the request.
    pub fn budget_figures(&self) -> Option<&BudgetFigures> {
        self.budget.as_ref()
    }

    /// Replaces the reservation by what the request consumed, counted in the window of `at_ms` (no money: for a
    /// request no budget counts). See [`QuotaTicket::settle_event`].
    pub fn settle(self, prompt: u64, completion: u64, at_ms: u64) -> Option<Arc<LocalUsage>> {
        self.settle_as(prompt, completion, None, at_ms)
    }

    /// Replaces the reservation by what the request of `event` consumed, counted in the window of its
    /// `finished_at_ms`: its tokens and, under a budget, its cost — priced exactly as billing-consumer prices the
    /// event (the model that served, its tokens of every type, the fee when a provider served it). Returns the
    /// local usage for the event pump to tell where the event landed, or `None` when no scope counts it.
    pub fn settle_event(self, event: &UsageRecorded) -> Option<Arc<LocalUsage>> {
        let cost = self.prices.as_ref().map(|prices| {
            let charge = prices.charge(&event.model_served, event.finished_at_ms, &TokenUsage::of(event));
            let micros = u64::try_from(charge.cost_micros).unwrap_or(0);
            charge
                .version
                .map(|v| Costs::one(&v.currency, micros))
                .unwrap_or_default()
        });
        self.settle_as(
            u64::from(event.prompt_tokens),
            u64::from(event.completion_tokens),
            cost,
            event.finished_at_ms,
        )
    }

    fn settle_as(
        mut self,
        prompt: u64,
        completion: u64,
        cost: Option<Costs>,
        at_ms: u64,
    ) -> Option<Arc<LocalUsage>> {
        self.settled = true;
        if self.books.is_empty() && self.attempt_books.is_empty() {
            return None;
        }
        // Under every book's lock, so no recount sees half of it.
        let books: Vec<&Arc<ScopeBook>> = self.books.iter().chain(&self.attempt_books).collect();
        let mut guards = lock_all(books.iter().map(|b| &b.pending));
        let before: Vec<u64> = books
            .iter()
            .map(|b| self.usage.amount(&b.limit().scope))
            .collect();
        self.usage.prompt.store(prompt, Ordering::Release);
        self.usage.completion.store(completion, Ordering::Release);
        if let Some(costs) = cost {
            self.usage.cost.store(Some(Arc::new(costs)));
        }
        self.usage.settled_at_ms.store(at_ms.max(1), Ordering::Release);
        for ((book, pending), old) in books.iter().zip(guards.iter_mut()).zip(before) {
            pending.total = pending
                .total
                .saturating_sub(old)
                .saturating_add(self.usage.amount(&book.limit().scope));
        }
        drop(guards);
        Some(self.usage.clone())
    }
}

impl Drop for QuotaTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.release_attempt();
            for book in &self.books {
                book.remove(&self.usage);
            }
        }
    }
}

#[cfg(test)]
mod tests;
