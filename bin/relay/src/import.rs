//! `relay import`: a JSON-lines file (or stdin) into the relay through `POST /events/batch`, with
//! progress, resuming, retries of what may be retried, and a summary.
//!
//! Why one file over 600 lines: the reader thread, the batcher, the sender and the resumable
//! tally are one pipeline with one state file; each is its own function.
//!
//! Lines are read on a thread of their own and cut into batches (at most `--batch-size` events
//! and the API's 1 MiB); up to `--concurrency` batches are in flight, and they are accounted in
//! order, so the state file always says "every line before this one is answered". A batch is
//! safe to send again (ids make it idempotent): a retried or resumed batch answers `duplicate`
//! for what it had stored.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use relay_ingest::{MAX_BATCH_BYTES, MAX_BATCH_ITEMS, MAX_BODY_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::args;

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// JSON-lines file of events, one per line (blank lines are skipped), or `-` for stdin.
    input: String,
    /// The relay's base URL (…/events/batch is added) or its full batch URL.
    #[arg(long, env = "RELAY_URL", value_parser = args::http_url)]
    url: String,
    /// API key sent as `x-api-key`.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Events per request (the API takes at most 500 and 1 MiB).
    #[arg(long, default_value_t = MAX_BATCH_ITEMS as u16, value_parser = clap::value_parser!(u16).range(1..=MAX_BATCH_ITEMS as i64))]
    batch_size: u16,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = args::positive_count)]
    concurrency: usize,
    /// Continue after the last line a previous run of this import had answered (its state file).
    #[arg(long)]
    resume: bool,
    /// Where progress is kept for --resume. Default: `FILE.relay-import` beside the input;
    /// needed to resume stdin (send the same lines again: those already answered are skipped).
    #[arg(long)]
    state: Option<PathBuf>,
    /// A request that fails in a way worth retrying (no answer, 429, 5xx) is tried this many times.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,
    /// Write every failed line here, as JSON lines (line, id, status, error, field, message).
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A line that was not accepted (and is not a duplicate).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Failure {
    line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// `invalid` or `conflict`.
    status: String,
    error: String,
    message: String,
    /// The event field at fault, when the relay named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// Where an import stands; also what the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Tally {
    /// Lines answered (or skipped as blank), from the start of the input.
    lines: u64,
    /// Bytes of input those lines take.
    bytes: u64,
    accepted: u64,
    duplicate: u64,
    conflict: u64,
    invalid: u64,
    /// The first [`KEPT_FAILURES`] failures; the counts above cover all of them.
    failures: Vec<Failure>,
}

const KEPT_FAILURES: usize = 1_000;

impl Tally {
    fn failed(&self) -> u64 {
        self.conflict + self.invalid
    }

    fn add(&mut self, failure: Failure) {
        match failure.status.as_str() {
            "conflict" => self.conflict += 1,
            _ => self.invalid += 1,
        }
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(failure);
        }
    }
}

/// A batch as the reader cut it: the events to send, the lines refused before sending, and
/// where in the input it ends.
#[derive(Debug, Default)]
struct Batch {
    /// (line number, the line's JSON text).
    items: Vec<(u64, String)>,
    local: Vec<Failure>,
    last_line: u64,
    end_bytes: u64,
}

impl Batch {
    /// The request body: the items as one JSON array, their text as given.
    fn body(&self) -> String {
        let mut body = String::with_capacity(self.size());
        body.push('[');
        for (i, (_, text)) in self.items.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(text);
        }
        body.push(']');
        body
    }

    fn size(&self) -> usize {
        2 + self.items.iter().map(|(_, t)| t.len() + 1).sum::<usize>()
    }
}

/// Cuts lines into batches of at most `max_items` events and [`MAX_BATCH_BYTES`]; lines that are
/// not JSON or too large to send fail here, with their line number.
struct Batcher {
    max_items: usize,
    line: u64,
    bytes: u64,
    current: Batch,
}

impl Batcher {
    fn new(max_items: usize, line: u64, bytes: u64) -> Self {
        Batcher {
            max_items,
            line,
            bytes,
            current: Batch::default(),
        }
    }

    /// Takes one line (with its terminator, as read); returns a batch when one is full.
    fn push(&mut self, raw: &str) -> Option<Batch> {
        self.line += 1;
        self.bytes += raw.len() as u64;
        let text = raw.trim();
        let mut full = None;
        if !text.is_empty() {
            if let Some(failure) = self.refuse(text) {
                self.current.local.push(failure);
            } else {
                let fits = self.current.items.len() < self.max_items
                    && self.current.size() + text.len() < MAX_BATCH_BYTES;
                if !fits {
                    full = Some(std::mem::take(&mut self.current));
                }
                self.current.items.push((self.line, text.to_owned()));
            }
        }
        self.current.last_line = self.line;
        self.current.end_bytes = self.bytes;
        if self.current.items.len() == self.max_items {
            // Full now: hand it over with this line, before the next one is read.
            return full.or_else(|| Some(std::mem::take(&mut self.current)));
        }
        full
    }

    fn finish(self) -> Option<Batch> {
        let last = self.current;
        (!last.items.is_empty() || !last.local.is_empty() || last.last_line > 0).then_some(last)
    }

    fn refuse(&self, text: &str) -> Option<Failure> {
        let failure = |error: &str, message: String| Failure {
            line: self.line,
            id: None,
            status: "invalid".into(),
            error: error.into(),
            message,
            field: None,
        };
        if text.len() > MAX_BODY_BYTES {
            return Some(failure(
                "payload_too_large",
                format!("event exceeds {} KiB", MAX_BODY_BYTES / 1024),
            ));
        }
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => None,
            Err(e) => Some(failure(
                "invalid_json",
                format!("line is not valid JSON: {e}"),
            )),
        }
    }
}

pub(crate) async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let url = batch_url(&args.url);
    let from_stdin = args.input == "-";
    let state_path = match (&args.state, from_stdin) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(PathBuf::from(format!("{}.relay-import", args.input))),
        (None, true) => None,
    };
    let mut tally = earlier_progress(&args, state_path.as_deref())?;
    let (input, total) = open_input(&args, from_stdin, &tally)?;
    let bar = progress_bar(total, tally.bytes);

    let (tx, batches) = mpsc::channel::<std::io::Result<Batch>>(args.concurrency * 2);
    let reader = {
        let (skip_lines, start) = match from_stdin {
            // Stdin cannot seek: the lines answered before are read again and skipped.
            true => (tally.lines, (0, 0)),
            false => (0, (tally.lines, tally.bytes)),
        };
        let max = usize::from(args.batch_size);
        std::thread::Builder::new()
            .name("relay-import-reader".into())
            .spawn(move || read_batches(input, skip_lines, start, max, &tx))?
    };
    let started = Instant::now();
    let already = (tally.accepted, tally.duplicate, tally.failed());
    // The batches' receiver goes with the pump: a reader blocked on stdin never holds the
    // exit up.
    let outcome = pump(
        &args,
        &url,
        batches,
        &mut tally,
        state_path.as_deref(),
        &bar,
    )
    .await;
    bar.finish_and_clear();
    if let Err(e) = outcome {
        let resume = match &state_path {
            Some(_) if from_stdin => " (rerun with --resume, sending the same input)",
            Some(_) => " (rerun with --resume to continue)",
            None => "",
        };
        anyhow::bail!(
            "{e:#}: import stopped; every line up to {} is answered{resume}",
            tally.lines
        );
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
        .with_context(|| format!("cannot read {}", args.input))?;
    report(
        &args,
        &tally,
        state_path.as_deref(),
        started.elapsed(),
        already,
    )
}

/// The progress of an earlier run, with `--resume` (and what a user should know without it).
fn earlier_progress(args: &ImportArgs, state_path: Option<&Path>) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    match (state_path, args.resume) {
        (None, true) => bail!("--resume needs --state FILE when reading stdin"),
        (Some(path), true) => match std::fs::read_to_string(path) {
            Ok(text) => {
                tally = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not an import state file", path.display()))?;
                eprintln!(
                    "resuming after line {} ({} accepted, {} duplicate, {} failed so far)",
                    tally.lines,
                    tally.accepted,
                    tally.duplicate,
                    tally.failed()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "no earlier progress in {}: starting at line 1",
                    path.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        },
        (Some(path), false) if path.exists() => eprintln!(
            "note: {} holds an earlier run's progress; starting at line 1 (--resume continues \
             from there; lines sent again answer `duplicate`)",
            path.display()
        ),
        _ => {}
    }

    Ok(tally)
}

/// The input, from where the earlier run stopped, and its length when it has one.
fn open_input(
    args: &ImportArgs,
    from_stdin: bool,
    tally: &Tally,
) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    Ok(if from_stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let mut file =
            File::open(&args.input).with_context(|| format!("cannot open {}", args.input))?;
        let len = file.metadata()?.len();
        if tally.bytes > len {
            bail!(
                "{} is shorter ({len} bytes) than where the last import stopped ({} bytes): it \
                 changed; run without --resume",
                args.input,
                tally.bytes
            );
        }
        file.seek(SeekFrom::Start(tally.bytes))?;
        (Box::new(file), Some(len))
    })
}

fn progress_bar(total: Option<u64>, position: u64) -> ProgressBar {
    let bar = match total {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes}  {msg}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {binary_bytes} read  {msg}")
                .expect("valid template"),
        ),
    };
    bar.set_position(position);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Keeps up to `--concurrency` batches in flight and accounts for each in order, saving the
/// progress after each; stops at the first batch that fails for good, or at a signal.
async fn pump(
    args: &ImportArgs,
    url: &str,
    mut batches: mpsc::Receiver<std::io::Result<Batch>>,
    tally: &mut Tally,
    state_path: Option<&Path>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("relay-import/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut in_flight: VecDeque<(Batch, tokio::task::JoinHandle<anyhow::Result<Vec<Value>>>)> =
        VecDeque::new();
    let mut reading = true;
    let stop = crate::signals::stop_requested();
    tokio::pin!(stop);
    'import: loop {
        // Keep the pipeline full, then account for the oldest batch.
        while reading && in_flight.len() < args.concurrency {
            let next = tokio::select! {
                next = batches.recv() => next,
                () = &mut stop => break 'import Err(anyhow::anyhow!("interrupted")),
            };
            let batch = match next {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    break 'import Err(
                        anyhow::Error::new(e).context(format!("cannot read {}", args.input))
                    );
                }
                None => {
                    reading = false;
                    break;
                }
            };
            let request = (!batch.items.is_empty()).then(|| batch.body());
            let (client, url, key, attempts) = (
                client.clone(),
                url.to_owned(),
                args.api_key.clone(),
                args.attempts,
            );
            let n = batch.items.len();
            let task = tokio::spawn(async move {
                match request {
                    Some(body) => send(&client, &url, &key, body, n, attempts).await,
                    None => Ok(Vec::new()),
                }
            });
            in_flight.push_back((batch, task));
        }
        let Some((batch, task)) = in_flight.pop_front() else {
            break Ok(());
        };
        let results = tokio::select! {
            joined = task => match joined {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => break Err(e),
                Err(e) => break Err(anyhow::Error::new(e).context("a request task failed")),
            },
            () = &mut stop => break Err(anyhow::anyhow!("interrupted")),
        };
        account(tally, batch, &results);
        if let Some(path) = state_path {
            save(path, tally)?;
        }
        bar.set_position(tally.bytes);
        bar.set_message(format!(
            "{} accepted, {} duplicate, {} failed",
            tally.accepted,
            tally.duplicate,
            tally.failed()
        ));
    }
}

/// The summary (or JSON report) and the errors file; the state file is no longer needed.
fn report(
    args: &ImportArgs,
    tally: &Tally,
    state_path: Option<&Path>,
    elapsed: Duration,
    already: (u64, u64, u64),
) -> anyhow::Result<ExitCode> {
    if let Some(path) = state_path {
        let _ = std::fs::remove_file(path);
    }
    if let Some(path) = &args.errors {
        let mut text = String::new();
        for f in &tally.failures {
            text.push_str(&serde_json::to_string(f)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let sent_now =
        (tally.accepted + tally.duplicate + tally.failed()) - (already.0 + already.1 + already.2);
    let per_s = sent_now as f64 / elapsed.as_secs_f64().max(1e-3);
    if args.json {
        let report = json!({
            "lines": tally.lines,
            "accepted": tally.accepted,
            "duplicate": tally.duplicate,
            "conflict": tally.conflict,
            "invalid": tally.invalid,
            "failed": tally.failed(),
            "events_per_s": per_s,
            "elapsed_s": elapsed.as_secs_f64(),
            "failures": tally.failures,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(tally, per_s, elapsed, args.errors.as_deref());
    }
    Ok(if tally.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn batch_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/events/batch") {
        url.to_owned()
    } else {
        format!(
            "{}/batch",
            url.strip_suffix("/events").unwrap_or(url).to_owned() + "/events"
        )
    }
}

/// The reader thread: skips `skip` lines, then cuts the rest into batches.
fn read_batches(
    input: Box<dyn Read + Send>,
    skip: u64,
    (line, bytes): (u64, u64),
    max_items: usize,
    tx: &mpsc::Sender<std::io::Result<Batch>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut raw = String::new();
    let mut skipped = 0;
    let mut batcher = Batcher::new(max_items, line, bytes);
    loop {
        raw.clear();
        let read = match reader.read_line(&mut raw) {
            Ok(read) => read,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        if read == 0 {
            break;
        }
        if skipped < skip {
            skipped += 1;
            batcher.line += 1;
            batcher.bytes += read as u64;
            continue;
        }
        if let Some(batch) = batcher.push(&raw)
            && tx.blocking_send(Ok(batch)).is_err()
        {
            return Ok(()); // the importer stopped
        }
    }
    if let Some(last) = batcher.finish() {
        let _ = tx.blocking_send(Ok(last));
    }
    Ok(())
}

/// Why one try of a batch failed: worth another try later, or not.
#[derive(Debug)]
pub(crate) enum SendError {
    Later(String),
    Fatal(anyhow::Error),
}

/// Sends one batch, trying again what may succeed later (no answer, 408, 429, 5xx) with the
/// core's backoff; `Err` stops the import.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
    items: usize,
    attempts: u32,
) -> anyhow::Result<Vec<Value>> {
    let backoff = relay_core::backoff::Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(10),
    };
    let sent = relay_core::backoff::retry(
        backoff,
        attempts,
        |e| matches!(e, SendError::Later(_)),
        |attempt, e, wait| tracing::debug!(attempt, error = ?e, ?wait, "batch not taken; trying again"),
        || send_once(client, url, key, body.clone(), items),
    )
    .await;
    match sent {
        Ok(results) => Ok(results),
        Err(SendError::Later(last)) => bail!("{last} (after {attempts} attempts)"),
        Err(SendError::Fatal(e)) => Err(e),
    }
}

async fn send_once(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
    items: usize,
) -> Result<Vec<Value>, SendError> {
    let response = client
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await
        .map_err(|e| SendError::Later(format!("no answer from {url}: {e}")))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        if results.len() != items {
            return Err(SendError::Fatal(anyhow::anyhow!(
                "{url} answered {} results for {items} events: is it a relay?",
                results.len()
            )));
        }
        return Ok(results);
    }
    let message = answer["message"].as_str().unwrap_or("");
    let last = format!("{url} answered {status}: {message}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Later(last))
    } else {
        Err(SendError::Fatal(anyhow::anyhow!(last)))
    }
}

fn account(tally: &mut Tally, batch: Batch, results: &[Value]) {
    for failure in batch.local {
        tally.add(failure);
    }
    for ((line, _), result) in batch.items.iter().zip(results) {
        let text = |k: &str| result[k].as_str().map(str::to_owned);
        match result["status"].as_str() {
            Some("accepted") => tally.accepted += 1,
            Some("duplicate") => tally.duplicate += 1,
            status => tally.add(Failure {
                line: *line,
                id: text("id"),
                status: status.unwrap_or("invalid").to_owned(),
                error: text("error").unwrap_or_default(),
                message: text("message").unwrap_or_default(),
                field: text("field"),
            }),
        }
    }
    tally.lines = batch.last_line;
    tally.bytes = batch.end_bytes;
}

/// The state file, replaced whole so a crash leaves the old one or the new one.
fn save(path: &Path, tally: &Tally) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(tally)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn print_summary(tally: &Tally, per_s: f64, elapsed: Duration, errors: Option<&Path>) {
    let mut t = crate::ops::table();
    t.set_header(["", "lines"]);
    for (k, v) in [
        ("read", tally.lines.to_string()),
        ("accepted", tally.accepted.to_string()),
        ("duplicate (already stored)", tally.duplicate.to_string()),
        (
            "conflict (id taken by another payload)",
            tally.conflict.to_string(),
        ),
        ("invalid", tally.invalid.to_string()),
        ("events/s", format!("{per_s:.0}")),
        ("elapsed", format!("{:.1} s", elapsed.as_secs_f64())),
    ] {
        t.add_row([k.to_owned(), v]);
    }
    println!("{t}");
    if tally.failures.is_empty() {
        return;
    }
    const SHOWN: usize = 20;
    let mut f = Table::new();
    f.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(["line", "id", "status", "error", "field", "message"]);
    for failure in tally.failures.iter().take(SHOWN) {
        f.add_row([
            failure.line.to_string(),
            failure.id.clone().unwrap_or_default(),
            failure.status.clone(),
            failure.error.clone(),
            failure.field.clone().unwrap_or_default(),
            failure.message.clone(),
        ]);
    }
    println!("{f}");
    let more = tally.failed().saturating_sub(SHOWN as u64);
    match errors {
        Some(path) => println!("every failed line is in {}", path.display()),
        None if more > 0 => println!("… and {more} more (--errors FILE writes them all)"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(lines: &[&str], max: usize) -> Vec<Batch> {
        let mut b = Batcher::new(max, 0, 0);
        let mut out: Vec<Batch> = lines.iter().filter_map(|l| b.push(l)).collect();
        out.extend(b.finish());
        out
    }

    #[test]
    fn lines_are_cut_into_batches_with_their_numbers_and_local_failures() {
        let batches = cut(
            &[
                "{\"id\":\"a\"}\n",
                "\n",
                "not json\n",
                "{\"id\":\"b\"}\n",
                "{\"id\":\"c\"}",
            ],
            2,
        );
        assert_eq!(batches.len(), 2);
        assert_eq!(
            batches[0].items,
            [
                (1, "{\"id\":\"a\"}".to_owned()),
                (4, "{\"id\":\"b\"}".to_owned())
            ]
        );
        assert_eq!(batches[0].local.len(), 1);
        assert_eq!(
            (batches[0].local[0].line, batches[0].local[0].error.as_str()),
            (3, "invalid_json")
        );
        assert_eq!((batches[0].last_line, batches[0].end_bytes), (4, 32));
        assert_eq!(batches[0].body(), r#"[{"id":"a"},{"id":"b"}]"#);
        assert_eq!(batches[1].items, [(5, "{\"id\":\"c\"}".to_owned())]);
        assert_eq!(batches[1].last_line, 5);
    }

    #[test]
    fn a_batch_stays_under_the_apis_byte_limit() {
        let line = format!("{{\"body\":\"{}\"}}\n", "x".repeat(200 * 1024));
        let lines: Vec<&str> = std::iter::repeat_n(line.as_str(), 12).collect();
        let batches = cut(&lines, 500);
        assert!(batches.len() >= 3, "{}", batches.len());
        assert!(batches.iter().all(|b| b.body().len() <= MAX_BATCH_BYTES));
        assert_eq!(batches.iter().map(|b| b.items.len()).sum::<usize>(), 12);
        let huge = format!("{{\"body\":\"{}\"}}", "x".repeat(300 * 1024));
        let refused = cut(&[&huge], 500);
        assert_eq!(refused[0].local[0].error, "payload_too_large");
    }

    #[test]
    fn urls_point_at_the_batch_route() {
        for (given, expected) in [
            ("http://h:1", "http://h:1/events/batch"),
            ("http://h:1/", "http://h:1/events/batch"),
            ("http://h:1/events", "http://h:1/events/batch"),
            ("http://h:1/events/batch", "http://h:1/events/batch"),
        ] {
            assert_eq!(batch_url(given), expected);
        }
    }
}
