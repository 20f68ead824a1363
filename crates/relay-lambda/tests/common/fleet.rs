//! A fleet of dispatchers on one stack against one rate-limited target, as Lambda instances
//! under an event source mapping would run: the integration test and the `fleet` benchmark
//! example both drive it.
//!
//! The fleet shares the target's limit through the stack's control table (moto). Their work
//! comes from the stack's SQS queue and events table ([`Work::Stack`]), or, so the figures
//! measure the sharing and not moto, from one embedded store ([`Work::Embedded`]): moto spends
//! ~7 ms of one Python thread on each conditional `UpdateItem`, and tops out near 35–40
//! deliveries/s on this machine with two such updates per delivery.

use std::time::{Duration, Instant};

use relay_aws::{Aws, DynamoIngest, SqsQueue};
use relay_core::rate::RateConfig;
use relay_core::{Ingest, parse_event};
use relay_dispatch::{DispatchConfig, Dispatcher, GraphqlClient, TargetConfig};
use relay_lambda::fleet::Fleet;
use tokio::sync::watch;

/// Where the fleet's work comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The stack's queue and events table, as on AWS.
    Stack,
    /// One embedded store the dispatchers share.
    Embedded,
}

#[derive(Debug, Clone, Copy)]
pub struct FleetRun {
    pub work: Work,
    pub dispatchers: usize,
    /// The target's limit, requests/s (a bucket of `burst`).
    pub limit: f64,
    pub burst: f64,
    /// A fleet-wide ceiling (`--target-rate`), if any.
    pub ceiling: Option<f64>,
    pub events: usize,
    /// Measured between these offsets from the start of dispatching.
    pub measure: (Duration, Duration),
}

#[derive(Debug, Clone, Copy)]
pub struct FleetResult {
    /// Events the target accepted per second in the measured span.
    pub delivered_rate: f64,
    /// Requests the target refused for its limit, as a share of all it got in that span.
    pub refused_share: f64,
    /// The fewest members any dispatcher saw in its last sync.
    pub members_seen: usize,
}

/// Stores `events` events, then queues them as fast as the target takes them, keeping about
/// [`QUEUED`] waiting: moto's `ReceiveMessage` and `GetQueueAttributes` scan the whole queue
/// (150 ms per receive at 1,400 messages, 3 ms at 10), which SQS does not, so a deep queue
/// would measure moto.
async fn stage(
    aws: &Aws,
    events: usize,
    taken: impl Fn() -> usize + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let ingest = DynamoIngest::new(aws.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..8 {
        let ingest = ingest.clone();
        tasks.spawn(async move {
            for i in (part..events).step_by(8) {
                let body =
                    format!(r#"{{"id":"fleet-{i:05}","name":"n","body":"b","timestamp":1}}"#);
                ingest
                    .accept(parse_event(body.as_bytes()).expect("valid"))
                    .await
                    .expect("stored");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("staging task");
    }
    let aws = aws.clone();
    tokio::spawn(async move {
        let url = aws.queue_urls().await.expect("the stack's queues").0;
        let ids: Vec<relay_aws::outbox::NewEvent> = (0..events)
            .map(|i| format!("fleet-{i:05}").into())
            .collect();
        let mut next = 0;
        while next < ids.len() {
            let waiting = next.saturating_sub(taken());
            let top_up = QUEUED.saturating_sub(waiting).min(ids.len() - next);
            let failed = relay_aws::outbox::forward(&aws, &url, &ids[next..next + top_up]).await;
            assert!(failed.is_empty(), "could not queue: {:?}", failed.first());
            next += top_up;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Messages kept waiting in the queue while staging.
const QUEUED: usize = 120;

/// Stages `run.events` events, starts the target and the dispatchers, and measures.
pub async fn run_fleet(aws: &Aws, run: FleetRun) -> FleetResult {
    let target = std::sync::Arc::new(
        target_sim::start(
            "127.0.0.1:0".parse().expect("an address"),
            target_sim::TargetConfig {
                rate: run.limit,
                burst: Some(run.burst),
                ..target_sim::TargetConfig::default()
            },
        )
        .await
        .expect("the target starts"),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (feeder, store) = match run.work {
        Work::Stack => {
            let target = std::sync::Arc::clone(&target);
            let feeder = stage(aws, run.events, move || target.stats().events as usize).await;
            (Some(feeder), None)
        }
        Work::Embedded => {
            let store = relay_store::SqliteStore::open(dir.path()).expect("the store");
            for i in 0..run.events {
                let body =
                    format!(r#"{{"id":"fleet-{i:05}","name":"n","body":"b","timestamp":1}}"#);
                store
                    .accept(parse_event(body.as_bytes()).expect("valid"))
                    .await
                    .expect("stored");
            }
            store.indexed().await.expect("indexed");
            (None, Some(store))
        }
    };
    let client = GraphqlClient::new(&TargetConfig::new(target.url())).expect("a client");
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut fleets = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..run.dispatchers {
        let config = DispatchConfig {
            rate: RateConfig {
                ceiling: run.ceiling,
                ..RateConfig::default()
            },
            lease: Duration::from_secs(30),
            claim_at_least: 10,
            ..DispatchConfig::default()
        };
        let handle = match &store {
            None => {
                let queue = SqsQueue::new(aws.clone(), Duration::from_secs(3600))
                    .await
                    .expect("the queue");
                let dispatcher = Dispatcher::new(queue, client.clone(), config);
                let handle = dispatcher.handle();
                tasks.spawn(dispatcher.run(until_stopped(stopped.clone())));
                handle
            }
            Some(store) => {
                let dispatcher = Dispatcher::new(store.clone(), client.clone(), config);
                let handle = dispatcher.handle();
                tasks.spawn(dispatcher.run(until_stopped(stopped.clone())));
                handle
            }
        };
        let fleet = std::sync::Arc::new(Fleet::new(aws.clone(), handle));
        fleets.push(std::sync::Arc::clone(&fleet));
        let rx = stopped.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(relay_lambda::fleet::PERIOD);
            let mut rx = rx;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|s| *s) => break,
                }
                if let Err(e) = fleet.sync().await {
                    eprintln!("fleet sync: {e}");
                }
            }
            fleet.leave().await;
        });
    }
    let started = Instant::now();
    tokio::time::sleep(run.measure.0).await;
    let first = target.stats();
    tokio::time::sleep(run.measure.1 - run.measure.0).await;
    let last = target.stats();
    let span = (run.measure.1 - run.measure.0).as_secs_f64();
    for fleet in &fleets {
        eprintln!("dispatcher {}: {:?}", fleet.id(), fleet.rate_report());
    }
    let members_seen = {
        let mut fewest = usize::MAX;
        for fleet in &fleets {
            fewest = fewest.min(fleet.sync().await.map_or(0, |v| v.members));
        }
        fewest
    };
    let _ = stop.send(true);
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    while tasks.join_next().await.is_some() {}
    if let Ok(target) = std::sync::Arc::try_unwrap(target) {
        target.stop().await;
    }
    let accepted = (last.events - first.events) as f64;
    let refused = (last.rate_limited - first.rate_limited) as f64;
    eprintln!(
        "{} dispatchers for {:.0?}: {accepted} accepted, {refused} refused in the measured {span} s",
        run.dispatchers,
        started.elapsed()
    );
    FleetResult {
        delivered_rate: accepted / span,
        refused_share: refused / (accepted + refused).max(1.0),
        members_seen,
    }
}
