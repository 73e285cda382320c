//! When the state's planning walk must run again, with no I/O. Planning
//! runs after every batch of frames but walks every stream only when a
//! verdict can change: an event marks [`Wake`] dirty, and the walk notes
//! the earliest exchange or host time at which one changes by itself (with
//! a safety walk every [`SAFETY_WALK_MS`]).

use std::collections::BTreeMap;

use crate::domain::{Market, TimeUs};
use crate::recorder::clock::MarketState;
use crate::recorder::judge::MonoMs;

/// Host time between two walks of [`State::plan`] with no event and no
/// wake-up falling due: a bound on the delay of a verdict should an event
/// ever go unmarked, at the cost of one walk a second.
///
/// [`State::plan`]: crate::recorder::state::State::plan
const SAFETY_WALK_MS: MonoMs = 1_000;

/// When [`State::plan`] must walk every stream again. Planning runs after
/// every batch of frames, and a walk costs O(streams); but a verdict only
/// changes when an hour's end passes on the exchange clock, a fill report
/// or a seal outcome arrives, a late row lands in a sealed hour, or a timer
/// falls due. So a walk notes the earliest of those times, the events mark
/// the state dirty, and `plan` walks only then.
///
/// [`State::plan`]: crate::recorder::state::State::plan
#[derive(Debug, Default)]
pub(super) struct Wake {
    /// Something that can change a verdict happened since the last walk.
    pub(super) dirty: bool,
    /// The last walk stopped at its `max_seals`: it has more to plan.
    pub(super) capped: bool,
    /// Per market walked with a clock and a span: the earliest exchange
    /// time at which a verdict changes by itself (`None`: only an event
    /// can change one). A market not listed is walked once it has a clock.
    pub(super) exchange: BTreeMap<Market, Option<TimeUs>>,
    /// The earliest host time at which a fill round may be tried again.
    pub(super) mono: Option<MonoMs>,
    pub(super) walked_at: Option<MonoMs>,
    pub(super) n_walks: u64,
}

impl Wake {
    pub(super) fn is_due(&self, markets: &BTreeMap<Market, MarketState>, now: MonoMs) -> bool {
        let Some(walked_at) = self.walked_at else {
            return true;
        };
        self.dirty
            || self.capped
            || now >= walked_at.saturating_add(SAFETY_WALK_MS)
            || self.mono.is_some_and(|at| now >= at)
            || markets.iter().any(|(market, state)| {
                match (state.exchange_time, self.exchange.get(market)) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(exchange_now), Some(at)) => at.is_some_and(|at| exchange_now >= at),
                }
            })
    }
}

/// Keeps the earlier of `earliest` and `at`.
pub(super) fn note_earliest<T: Ord + Copy>(earliest: &mut Option<T>, at: T) {
    *earliest = Some(earliest.map_or(at, |known| known.min(at)));
}
