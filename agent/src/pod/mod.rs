//! One pod's level-triggered reconcile: observe its sandbox and containers through CRI, compare
//! with the PodSpec, take the next actions (sandbox, init containers in order, sidecars, app
//! containers, restarts with back-off, termination), and compute the PodStatus to report.
//! The pod's worker runs one sync at a time; everything it needs to decide is re-read from the
//! runtime each time, so a restarted agent picks up where the last one left off.

mod status;
mod worker;

pub use status::ContainerView;
pub use worker::{Backoff, PodContext, ProbeState, SyncOutcome, Worker};

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
