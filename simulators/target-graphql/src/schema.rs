//! The target's GraphQL schema: `createEvent` plus queries over what it received.

use std::sync::Arc;

use async_graphql::{
    Context, EmptySubscription, ErrorExtensions, InputValueError, InputValueResult, Object, Scalar,
    ScalarType, Schema, SimpleObject,
};
use serde_json::{Map, Value};

use crate::{Shared, Stats};

pub type TargetSchema = Schema<Query, Mutation, EmptySubscription>;

pub(crate) fn build(shared: Arc<Shared>) -> TargetSchema {
    build_with(Mutation, shared)
}

fn build_with<M: async_graphql::ObjectType + 'static>(
    mutation: M,
    shared: Arc<Shared>,
) -> Schema<Query, M, EmptySubscription> {
    Schema::build(Query, mutation, EmptySubscription)
        .data(shared)
        .finish()
}

/// The idempotency keys of the request being executed: its `Idempotency-Key` header, and for a
/// batch of aliased mutations the request's `extensions.idempotencyKeys` (alias → key).
#[derive(Debug)]
pub(crate) struct IdempotencyKey {
    pub(crate) header: Option<String>,
    pub(crate) by_alias: Map<String, Value>,
}

impl IdempotencyKey {
    /// The key for the field at `alias`: the batch's own if it names one, else the header.
    fn of(&self, alias: Option<&str>) -> Option<&str> {
        alias
            .and_then(|a| self.by_alias.get(a))
            .and_then(Value::as_str)
            .or(self.header.as_deref())
    }
}

/// The event as relay sends it. A scalar rather than an input object on purpose: relay forwards
/// fields it does not know, and a strict input type would refuse them. The resolver checks the
/// fields the contract requires.
#[derive(Debug, Clone)]
pub struct EventInput(Map<String, Value>);

#[Scalar(name = "EventInput")]
impl ScalarType for EventInput {
    fn parse(value: async_graphql::Value) -> InputValueResult<Self> {
        match value.into_json() {
            Ok(Value::Object(map)) => Ok(EventInput(map)),
            Ok(other) => Err(InputValueError::custom(format!(
                "EventInput must be an object, got {other}"
            ))),
            Err(e) => Err(InputValueError::custom(e)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::from_json(Value::Object(self.0.clone()))
            .unwrap_or(async_graphql::Value::Null)
    }
}

#[derive(SimpleObject)]
struct CreatedEvent {
    id: String,
}

#[derive(SimpleObject)]
struct StoredEvent {
    id: String,
    input: EventInput,
    /// How many times `createEvent` was called with this id.
    deliveries: u64,
}

#[derive(Debug)]
pub struct Query;

#[Object]
impl Query {
    async fn stats(&self, ctx: &Context<'_>) -> Stats {
        ctx.data_unchecked::<Arc<Shared>>().stats()
    }

    async fn event(&self, ctx: &Context<'_>, id: String) -> Option<StoredEvent> {
        let events = ctx.data_unchecked::<Arc<Shared>>().events();
        events.get(&id).map(|r| StoredEvent {
            id,
            input: EventInput(r.input.clone()),
            deliveries: r.deliveries,
        })
    }

    /// Stored events, ordered by id.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] limit: usize,
    ) -> Vec<StoredEvent> {
        let mut events: Vec<_> = ctx
            .data_unchecked::<Arc<Shared>>()
            .events()
            .into_iter()
            .collect();
        events.sort_by(|a, b| a.0.cmp(&b.0));
        events
            .into_iter()
            .take(limit)
            .map(|(id, r)| StoredEvent {
                id,
                input: EventInput(r.input),
                deliveries: r.deliveries,
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// Nullable, as mutations usually are, so that in a batch of aliased calls one refused
    /// event nulls only its own field, not the whole answer.
    async fn create_event(
        &self,
        ctx: &Context<'_>,
        input: EventInput,
    ) -> async_graphql::Result<Option<CreatedEvent>> {
        create(ctx, input).map(Some)
    }
}

pub type StrictSchema = Schema<Query, StrictMutation, EmptySubscription>;

pub(crate) fn build_strict(shared: Arc<Shared>) -> StrictSchema {
    build_with(StrictMutation, shared)
}

/// `createEvent` declared non-null (`CreatedEvent!`), as many schemas do: a refused event's
/// error nulls the whole answer's `data`, and since mutation fields run one after another, the
/// aliases after it in a batch do not run at all. (async-graphql itself leaves the failed field
/// out and carries on; the GraphQL specification, and graphql-js, graphql-java and Hot
/// Chocolate, stop and null `data`. [`Halted`] and the handler make this target do the same.)
#[derive(Debug)]
pub struct StrictMutation;

/// Set once a field of the request failed: the fields after it do not run (strict schema).
#[derive(Debug, Default)]
pub(crate) struct Halted(pub(crate) std::sync::atomic::AtomicBool);

#[Object(name = "Mutation")]
impl StrictMutation {
    async fn create_event(
        &self,
        ctx: &Context<'_>,
        input: EventInput,
    ) -> async_graphql::Result<CreatedEvent> {
        create(ctx, input)
    }
}

/// `createEvent`: checks the input, then stores the event (or counts a duplicate). Under the
/// strict schema a refusal halts the request: the fields after it do not run.
fn create(ctx: &Context<'_>, input: EventInput) -> async_graphql::Result<CreatedEvent> {
    use std::sync::atomic::Ordering::SeqCst;
    let halted = ctx.data_opt::<Halted>();
    if halted.is_some_and(|h| h.0.load(SeqCst)) {
        // Not run: its answer is discarded with the whole `data`.
        return Ok(CreatedEvent { id: String::new() });
    }
    let created = run_create(ctx, input);
    if created.is_err()
        && let Some(halted) = halted
    {
        halted.0.store(true, SeqCst);
    }
    created
}

fn run_create(ctx: &Context<'_>, input: EventInput) -> async_graphql::Result<CreatedEvent> {
    let shared = ctx.data_unchecked::<Arc<Shared>>();
    let field = |name: &str| input.0.get(name).and_then(Value::as_str).map(str::to_owned);
    let Some(id) = field("id").filter(|id| !id.is_empty()) else {
        shared.count(|s| s.rejected += 1);
        return Err(async_graphql::Error::new("input.id is required")
            .extend_with(|_, e| e.set("code", "BAD_USER_INPUT")));
    };
    if let Some(name) = field("name")
        && shared.rejects(&name)
    {
        shared.count(|s| s.rejected += 1);
        return Err(
            async_graphql::Error::new(format!("events named {name:?} are refused"))
                .extend_with(|_, e| e.set("code", "BAD_USER_INPUT")),
        );
    }
    let alias = ctx.path_node.and_then(|node| match node.segment {
        async_graphql::QueryPathSegment::Name(name) => Some(name),
        async_graphql::QueryPathSegment::Index(_) => None,
    });
    let key = ctx.data_opt::<IdempotencyKey>().and_then(|k| k.of(alias));
    if key != Some(id.as_str()) {
        shared.count(|s| s.bad_idempotency_keys += 1);
    }
    shared.store(&id, input.0);
    Ok(CreatedEvent { id })
}
