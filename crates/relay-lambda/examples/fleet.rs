//! Benchmark: the share of a 50/s limit a fleet of 1, 2 and 4 dispatchers delivers, and the
//! share of requests the target refuses, with the limit shared through the stack's control
//! table on a private moto server. `loadtest/bench.sh fleet` runs it (release build).
//!
//! ```text
//! cargo run --release -p relay-lambda --example fleet -- [SECONDS] [stack]
//! ```
//! With `stack`, the work also comes through SQS and the events table, so moto's throughput
//! bounds the figures (informational only).

#[path = "../tests/common/fleet.rs"]
mod fleet;

use std::time::Duration;

use fleet::{FleetRun, Work, run_fleet};
use relay_aws::testing::MotoServer;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let work = match args.next().as_deref() {
        Some("stack") => Work::Stack,
        _ => Work::Embedded,
    };
    let warmup = Duration::from_secs(8);
    println!("| dispatchers | work | delivered/s of 50/s | share | refused share | members seen |");
    println!("|---|---|---|---|---|---|");
    for dispatchers in [1, 2, 4] {
        let moto = MotoServer::start();
        let aws = moto.stack(&format!("bench{dispatchers}")).await;
        let result = run_fleet(
            &aws,
            FleetRun {
                work,
                dispatchers,
                limit: 50.0,
                burst: 5.0,
                ceiling: None,
                events: (50 * (secs + 12)) as usize,
                measure: (warmup, warmup + Duration::from_secs(secs)),
            },
        )
        .await;
        println!(
            "| {dispatchers} | {work:?} | {:.1} | {:.1} % | {:.2} % | {} |",
            result.delivered_rate,
            result.delivered_rate / 50.0 * 100.0,
            result.refused_share * 100.0,
            result.members_seen
        );
    }
}
