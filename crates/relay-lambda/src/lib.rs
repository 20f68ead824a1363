//! relay's hosts on AWS: the Lambda handlers, the fleet a dispatcher joins, and what they emit
//! (EMF metric lines). Each of `lambdas/*` is a few lines over this crate, as the
//! aws-lambda-rust-runtime examples are; `relay up --backend aws` runs the same handlers in one
//! process. The adapters they drive (queue, store, outbox, archive, secrets, the control item)
//! are `relay-aws`'s; the delivery logic is `relay-dispatch`'s, the ingest API `relay-ingest`'s.

pub mod authorizer;
pub mod dispatcher;
pub mod emf;
pub mod fleet;
pub mod forwarder;
pub mod receiver;
pub mod start;
#[cfg(feature = "testing")]
pub mod testing;

pub use dispatcher::BatchDispatcher;
pub use forwarder::{Forwarder, forward_stream};
