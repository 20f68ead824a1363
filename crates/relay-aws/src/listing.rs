//! The console's event list on AWS: a `Scan` of the events table, a page at a time.
//!
//! DynamoDB keeps no order by time across partitions, and relay adds no index for it (a GSI on
//! one time key would be a hot partition at every burst): pages come in the table's order, each
//! sorted newest first. Time and id prefix filter in the scan; status and payload fields here,
//! on the same items. An event's `META` and `STATE` share a partition and come in that order,
//! so one scan page holds both; a `META` whose `STATE` fell on the next page, or which has
//! none yet (it is on its way through the outbox), is looked up alone.

use std::collections::HashMap;

use relay_core::delivery::DeliveryStatus;
use relay_core::ops::{EventPage, EventQuery, EventSummary};
use relay_core::{StoreError, UnixMillis};

use crate::items::{Item, META, STATE, State, get_n, get_s, key, n, pk, s};
use crate::{Aws, AwsError};

/// Items one `Scan` call reads.
const SCAN_BATCH: i32 = 500;
/// Most items a page reads: a filter that matches few stops here and says where to go on.
const SCAN_PER_PAGE: u64 = 20_000;

/// The cursor: the key of the last item a page took, as `pk` then `sk`, tab-separated.
fn cursor(item: &Item) -> Option<String> {
    Some(format!("{}\t{}", get_s(item, "pk")?, get_s(item, "sk")?))
}

fn start_key(cursor: &str) -> Result<Item, StoreError> {
    let (pk_, sk) = cursor
        .split_once('\t')
        .filter(|(pk_, _)| pk_.starts_with("EVT#"))
        .ok_or_else(|| {
            StoreError::Invalid(format!("{cursor:?} is not a cursor this relay gave"))
        })?;
    Ok(HashMap::from([
        ("pk".to_owned(), s(pk_)),
        ("sk".to_owned(), s(sk)),
    ]))
}

pub(crate) async fn events(aws: &Aws, q: &EventQuery) -> Result<EventPage, StoreError> {
    let failed = |e: AwsError| e.into_store_error();
    let mut start = q.cursor.as_deref().map(start_key).transpose()?;
    let limit = q.limit.max(1);
    let mut page = EventPage::default();
    let names = HashMap::from([("#sk".to_owned(), "sk".to_owned())]);
    let mut values = HashMap::from([
        (":meta".to_owned(), s(META)),
        (":state".to_owned(), s(STATE)),
    ]);
    // `STATE` items pass (they carry no time or id); `META` items meet the filters.
    let mut meta = vec!["#sk = :meta".to_owned()];
    if let Some(since) = q.since {
        meta.push("received_at >= :since".into());
        values.insert(":since".into(), n(since));
    }
    if let Some(until) = q.until {
        meta.push("received_at < :until".into());
        values.insert(":until".into(), n(until));
    }
    let mut filter = format!("#sk = :state OR ({})", meta.join(" AND "));
    if let Some(prefix) = &q.id_prefix {
        filter = format!("begins_with(pk, :prefix) AND ({filter})");
        values.insert(":prefix".into(), s(pk(prefix)));
    }
    loop {
        let out = aws
            .dynamodb
            .scan()
            .table_name(&aws.stack.events_table)
            .filter_expression(&filter)
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values(Some(values.clone()))
            .set_exclusive_start_key(start.take())
            .limit(SCAN_BATCH)
            .send()
            .await
            .map_err(|e| failed(AwsError::from_sdk("the events table", e)))?;
        page.scanned += out.scanned_count().max(0) as u64;
        let items = out.items.unwrap_or_default();
        let states: HashMap<&str, &Item> = items
            .iter()
            .filter(|i| get_s(i, "sk") == Some(STATE))
            .filter_map(|i| Some((get_s(i, "pk")?, i)))
            .collect();
        for item in items.iter().filter(|i| get_s(i, "sk") == Some(META)) {
            let Some(summary) = summarize(aws, q, item, &states).await.map_err(failed)? else {
                continue;
            };
            page.events.push(summary);
            if page.events.len() == limit {
                page.next = cursor(item);
                sort(&mut page);
                return Ok(page);
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() || page.scanned >= SCAN_PER_PAGE {
            page.next = start.as_ref().and_then(cursor);
            sort(&mut page);
            return Ok(page);
        }
    }
}

fn sort(page: &mut EventPage) {
    page.events.sort_by(|a, b| {
        b.received_at
            .cmp(&a.received_at)
            .then(b.event_id.cmp(&a.event_id))
    });
}

/// The event of a `META` item, if it meets the query's payload field and status.
async fn summarize(
    aws: &Aws,
    q: &EventQuery,
    item: &Item,
    states: &HashMap<&str, &Item>,
) -> Result<Option<EventSummary>, AwsError> {
    let Some(id) = get_s(item, "id") else {
        return Ok(None);
    };
    let payload: serde_json::Value = get_s(item, "payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    if q.field.as_ref().is_some_and(|f| !f.matches(&payload)) {
        return Ok(None);
    }
    let received_at: UnixMillis = get_n(item, "received_at").unwrap_or(0);
    let state = match states.get(pk(id).as_str()) {
        Some(state) => Some(State::read(id, state)),
        None => state_alone(aws, id).await?.map(|st| State::read(id, &st)),
    };
    // No `STATE` yet: stored, on its way through the outbox and the queue.
    let status = state
        .as_ref()
        .map_or(DeliveryStatus::Queued, |st| st.status);
    if q.status.is_some_and(|want| want != status) {
        return Ok(None);
    }
    Ok(Some(EventSummary {
        event_id: id.to_owned(),
        name: payload["name"].as_str().map(str::to_owned),
        received_at,
        status,
        tries: state.as_ref().map_or(0, |st| st.tries),
        delivered_at: state.as_ref().and_then(|st| st.delivered_at),
        last_error: state.and_then(|st| st.last_error),
    }))
}

async fn state_alone(aws: &Aws, id: &str) -> Result<Option<Item>, AwsError> {
    let out = aws
        .dynamodb
        .get_item()
        .table_name(&aws.stack.events_table)
        .set_key(Some(key(id, STATE)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("the events table", e))?;
    Ok(out.item)
}
