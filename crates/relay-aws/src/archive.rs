//! The S3 archive: every delivered or dead-lettered event, as gzip JSON lines under
//! `s3://<stack>-archive/events/date=YYYY-MM-DD/<ms>-<random>.jsonl.gz` (the date it was
//! settled; Hive-style, so Athena or any query engine partitions by it). Its items in DynamoDB
//! then expire by TTL: `STATE` a retention after delivery, `META` a fixed time after receipt.
//!
//! Settlements are gathered for up to [`GATHER`] (or [`MAX_RECORDS`]) and written as one
//! object, off the delivery path. A dispatcher flushes before it stops, and a Lambda invocation
//! before it returns. A write that fails is retried; one that keeps failing is logged, and those
//! events stay in DynamoDB until their TTL, never in S3.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{Aws, AwsError};

/// Longest a settled event waits to be written.
pub const GATHER: Duration = Duration::from_secs(1);
/// Most events in one object.
pub const MAX_RECORDS: usize = 1000;
/// The bucket's key prefix.
pub const PREFIX: &str = "events";

/// One line of the archive.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ArchiveRecord {
    pub id: String,
    /// `delivered` or `dead`.
    pub status: String,
    /// The event as received.
    pub event: serde_json::Value,
    pub received_at: i64,
    pub settled_at: i64,
    /// Attempts that counted (rate-limited answers do not).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The target's last answer.
    pub last_answer: String,
    /// The event's X-Ray trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

enum Msg {
    Record(Box<ArchiveRecord>),
    Flush(oneshot::Sender<()>),
}

/// The handle settlements go through. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Archiver {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("archive message")
    }
}

impl Archiver {
    pub(crate) fn start(aws: Aws) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(aws, rx));
        Archiver { tx }
    }

    pub(crate) fn add(&self, record: ArchiveRecord) {
        let _ = self.tx.send(Msg::Record(Box::new(record)));
    }

    /// Writes whatever is gathered, and waits for it.
    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn run(aws: Aws, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: Vec<ArchiveRecord> = Vec::new();
    loop {
        let msg = if pending.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(GATHER, rx.recv()).await {
                Ok(msg) => msg,
                Err(_) => {
                    write(&aws, std::mem::take(&mut pending)).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Record(record)) => {
                pending.push(*record);
                if pending.len() >= MAX_RECORDS {
                    write(&aws, std::mem::take(&mut pending)).await;
                }
            }
            Some(Msg::Flush(done)) => {
                write(&aws, std::mem::take(&mut pending)).await;
                let _ = done.send(());
            }
            None => {
                write(&aws, pending).await;
                return;
            }
        }
    }
}

/// Writes the records, one object per settlement date, with a few tries.
async fn write(aws: &Aws, records: Vec<ArchiveRecord>) {
    let mut by_date: std::collections::BTreeMap<String, Vec<ArchiveRecord>> = Default::default();
    for record in records {
        by_date
            .entry(date_of(record.settled_at))
            .or_default()
            .push(record);
    }
    for (date, records) in by_date {
        let key = format!(
            "{PREFIX}/date={date}/{}-{:08x}.jsonl.gz",
            records[0].settled_at,
            fastrand::u32(..)
        );
        let body = match gzip_lines(&records) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot compress archive records");
                continue;
            }
        };
        let backoff = relay_core::backoff::Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
        };
        let written = relay_core::backoff::retry(
            backoff,
            3,
            |_| true,
            |_, e, _| tracing::debug!(%key, error = %e, "archive write failed; trying again"),
            || put(aws, &key, body.clone()),
        )
        .await;
        match written {
            Ok(()) => tracing::debug!(%key, events = records.len(), "archived"),
            Err(e) => {
                let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).take(5).collect();
                tracing::error!(%key, error = %e, events = records.len(), first = ?ids, "could not archive settled events to S3; they stay in DynamoDB until their TTL");
            }
        }
    }
}

/// Writes `records` as one object under today's partition now, and returns its key: for an
/// operator's purge, which deletes the items only once their copy is in S3.
pub(crate) async fn write_now(aws: &Aws, records: &[ArchiveRecord]) -> Result<String, AwsError> {
    let now = relay_core::now_millis();
    let key = format!(
        "{PREFIX}/date={}/{now}-{:08x}.jsonl.gz",
        date_of(now),
        fastrand::u32(..)
    );
    let body = gzip_lines(records).map_err(|e| AwsError::Config(format!("archive: {e}")))?;
    put(aws, &key, body).await?;
    Ok(key)
}

/// Where an event's archived line is: the newest of the last `days` partitions first, at most
/// `max_objects` objects read (a busy stack writes one a second: beyond a few days, query the
/// archive with Athena). Returns the object's URL and the line.
pub(crate) async fn find(
    aws: &Aws,
    id: &str,
    days: u32,
    max_objects: usize,
) -> Result<Option<(String, ArchiveRecord)>, AwsError> {
    use std::io::Read;
    let s3 = aws_sdk_s3::Client::new(&aws.config);
    let bucket = &aws.stack.archive_bucket;
    let what = format!("bucket {bucket}");
    let needle = format!("\"id\":{}", serde_json::Value::String(id.to_owned()));
    let mut read = 0;
    for day in 0..i64::from(days) {
        let date = date_of(relay_core::now_millis() - day * 86_400_000);
        let mut pages = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{PREFIX}/date={date}/"))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk(&what, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        // Newest objects first: keys start with the time they were written.
        keys.sort_unstable_by(|a, b| b.cmp(a));
        for key in keys {
            if read >= max_objects {
                return Ok(None);
            }
            read += 1;
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(&what, e))?
                .body
                .collect()
                .await
                .map_err(|e| AwsError::Config(format!("reading s3://{bucket}/{key}: {e}")))?
                .into_bytes();
            let mut text = String::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .is_err()
            {
                continue;
            }
            for line in text.lines().filter(|l| l.contains(&needle)) {
                if let Ok(record) = serde_json::from_str::<ArchiveRecord>(line)
                    && record.id == id
                {
                    return Ok(Some((format!("s3://{bucket}/{key}"), record)));
                }
            }
        }
    }
    Ok(None)
}

async fn put(aws: &Aws, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
    aws_sdk_s3::Client::new(&aws.config)
        .put_object()
        .bucket(&aws.stack.archive_bucket)
        .key(key)
        .content_type("application/x-ndjson")
        .content_encoding("gzip")
        .body(body.into())
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&format!("bucket {}", aws.stack.archive_bucket), e))?;
    Ok(())
}

fn gzip_lines(records: &[ArchiveRecord]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for record in records {
        serde_json::to_writer(&mut gz, record)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// `YYYY-MM-DD` (UTC) of a Unix time in ms.
pub fn date_of(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_795_341_600_000), "2026-11-22");
    }
}
