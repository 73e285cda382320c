//! Frames handed from a connection task to the recorder, and a link's
//! loss as the task reports it (`drive_link` in `mod.rs` holds the frames
//! it reads back to back and calls [`hand_over`]).

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::link::{Link, LinkLost};
use super::FRAMES_PER_MESSAGE;
use super::{ConnectionPlan, ConnectionSettings, DriveOutcome, FramePayload, Inbound};
use crate::domain::TimeUs;
use crate::metrics::Counters;

/// Hands the frames taken from the sockets (`held`, emptied) to the
/// recorder as one message: [`Inbound::Frame`] for one, [`Inbound::Frames`]
/// for more. A send per frame (a permit taken, the receiver woken, each an
/// atomic on a line the recorder's core also writes) cost more than the
/// frame's WAL record in a burst; a live feed's frames still go one by one,
/// as nothing else is ready when they come.
///
/// The channel almost always has room: only a full one costs a timer (and
/// a wait, which the links' clocks are excused, and which is counted in
/// `backpressure_waits` and `backpressure_seconds`). A recorder too slow
/// for `max_backpressure_wait` loses the link (`Err`), the frames in hand
/// handed over first.
pub(super) async fn hand_over(
    held: &mut Vec<(TimeUs, FramePayload)>,
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    frames: &mpsc::Sender<Inbound>,
    (link, replacement): (&mut Link, &mut Option<Link>),
    counters: &Counters,
) -> Result<(), DriveOutcome> {
    let market = plan.market;
    let inbound = match held.len() {
        1 => {
            let (recv_time, payload) = held.pop().expect("one frame held");
            Inbound::Frame {
                market,
                recv_time,
                payload,
            }
        }
        _ => Inbound::Frames {
            market,
            frames: std::mem::replace(held, Vec::with_capacity(FRAMES_PER_MESSAGE)),
        },
    };
    match frames.try_reserve() {
        Ok(permit) => {
            permit.send(inbound);
            return Ok(());
        }
        Err(mpsc::error::TrySendError::Closed(())) => return Err(DriveOutcome::Stop),
        Err(mpsc::error::TrySendError::Full(())) => {}
    }
    Counters::add(&counters.backpressure_waits, 1);
    let started = Instant::now();
    let handed = wait_for_room(inbound, plan, settings, frames, link, replacement).await;
    counters
        .backpressure_seconds
        .inc_by(started.elapsed().as_secs_f64());
    handed
}

/// [`hand_over`] past a full channel: waits for room, at most
/// `max_backpressure_wait`.
async fn wait_for_room(
    inbound: Inbound,
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    frames: &mpsc::Sender<Inbound>,
    link: &mut Link,
    replacement: &mut Option<Link>,
) -> Result<(), DriveOutcome> {
    let market = plan.market;
    match tokio::time::timeout(settings.max_backpressure_wait, frames.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(inbound);
            // Time spent waiting for the recorder is not the exchange's
            // silence: the dead-link clock restarts once we read again,
            // and neither link is judged silent for it.
            let now = Instant::now();
            for waited in std::iter::once(link).chain(replacement.as_mut()) {
                waited.last_frame = waited.last_frame.max(now);
                waited.rate.excuse_until(now);
            }
            Ok(())
        }
        Ok(Err(_)) => Err(DriveOutcome::Stop),
        Err(_) => {
            // The recorder is too slow: give up the link rather than miss
            // pings, but hand over the frames in hand first.
            let _ = link.socket.close().await;
            if let Some(mut new_link) = replacement.take() {
                let _ = new_link.socket.close().await;
            }
            warn!(%market, task = plan.task, "recorder backlog: link closed, reconnecting after the backlog drains");
            if frames.send(inbound).await.is_err() {
                return Err(DriveOutcome::Stop);
            }
            Err(lost(link, LinkLost::Backlog))
        }
    }
}

/// The outcome of `link` lost for `reason`.
pub(super) fn lost(link: &Link, reason: LinkLost) -> DriveOutcome {
    DriveOutcome::Lost {
        link_number: link.number,
        lived: link.opened.elapsed(),
        delivered_data: link.delivered_data,
        reason,
        reroute: false,
    }
}
