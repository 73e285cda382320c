//! Opening a link: the handshake's slot, the dial (TCP, TLS, WebSocket
//! upgrade) and the link's first steps; the backoff between attempts; and
//! where to dial: the stream the URL names, and the route.
//!
//! The dial is an owned future ([`dial`]) so that a rotation can poll it
//! beside the old link's reads (`drive_link` in `mod.rs`): a slow
//! handshake then costs the old link nothing. A first link, or a reconnect,
//! has nothing else to read and awaits it ([`open_link`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::Link;
use super::socket::Socket;
use super::{socket, ConnectionPlan, ConnectionSettings, HandshakeBudget, Inbound, LinkLost};
use crate::binance::markets::Route;
use crate::binance::streams::{connection_url, stream_name};
use crate::domain::{StreamKind, Symbol};
use crate::metrics::Counters;

/// A dial under way: resolves to the upgraded socket or why there is none.
/// It borrows nothing, so it can wait in a `select!` beside other reads.
pub(super) type Dialing = Pin<Box<dyn Future<Output = Result<Dialed, LinkLost>> + Send>>;

/// An upgraded socket, and the stream its URL named (subscribed by the
/// handshake itself).
pub(super) struct Dialed {
    socket: Socket,
    named: Option<(Symbol, StreamKind)>,
}

/// The stream a link's URL names, after `refusals` handshakes in a row
/// answered that the URL is refused ([`LinkLost::url_refused`]): the
/// plan's first stream, then its second, then none (a bare `/stream`,
/// every stream subscribed by SUBSCRIBE, whose refusals are per stream),
/// and round again. `/stream?streams=<s>` is the documented form; the
/// others keep one stream an exchange refuses in a URL from blocking the
/// link's other streams.
pub(super) fn url_stream(plan: &ConnectionPlan, refusals: u32) -> Option<(Symbol, StreamKind)> {
    match refusals % 3 {
        0 => plan.streams.first().cloned(),
        1 => plan.streams.get(1).cloned(),
        _ => None,
    }
}

/// Sleeps the backoff delay; `false` if cancelled.
pub(super) async fn backoff(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    attempt: &mut u32,
    reason: &LinkLost,
    cancel: &CancellationToken,
    counters: &Counters,
) -> bool {
    let ceiling = settings.backoff_delay(*attempt, 1.0);
    let delay = settings.backoff_delay(*attempt, fastrand::f64());
    *attempt = attempt.saturating_add(1);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Counters::raise(&counters.reconnect_backoff_max_ms, ceiling_ms);
    warn!(market = %plan.market, task = plan.task, %reason, delay_ms = delay.as_millis() as u64, backoff_ceiling_ms = ceiling_ms, attempt = *attempt, "stream link lost, reconnecting");
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep_until(Instant::now() + delay) => true,
    }
}

/// Takes a handshake slot, dials and queues the subscription. `None` when
/// cancelled.
pub(super) async fn open_link(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    budget: &HandshakeBudget,
    frames: &mpsc::Sender<Inbound>,
    cancel: &CancellationToken,
    next_link: &mut u64,
    named: Option<(Symbol, StreamKind)>,
) -> Option<Result<Link, LinkLost>> {
    if !budget.acquire(cancel).await {
        return None;
    }
    let dialed = tokio::select! {
        _ = cancel.cancelled() => return None,
        dialed = dial(plan, settings, named) => dialed,
    };
    match dialed {
        Err(reason) => Some(Err(reason)),
        Ok(dialed) => link_up(plan, settings, frames, dialed, next_link)
            .await
            .map(Ok),
    }
}

/// Dials the plan's URL naming `named` ([`url_stream`]), within
/// `connect_timeout`; the handshake's slot is already taken.
pub(super) fn dial(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    named: Option<(Symbol, StreamKind)>,
) -> Dialing {
    let name = named
        .as_ref()
        .map(|(symbol, kind)| stream_name(symbol, *kind));
    let url = connection_url(&plan.ws_base_url, plan.market, plan.route, name.as_deref());
    let timeout = settings.connect_timeout;
    Box::pin(async move {
        match tokio::time::timeout(timeout, socket::connect(url.as_str())).await {
            Err(_) => Err(LinkLost::ConnectTimedOut),
            Ok(Err(error)) => Err(LinkLost::ConnectFailed(Arc::new(error))),
            Ok(Ok(socket)) => Ok(Dialed { socket, named }),
        }
    })
}

/// A dialed socket made a link: numbered, counted, its subscription
/// queued, and the runtime told. `None` when the runtime is gone.
pub(super) async fn link_up(
    plan: &ConnectionPlan,
    settings: &ConnectionSettings,
    frames: &mpsc::Sender<Inbound>,
    dialed: Dialed,
    next_link: &mut u64,
) -> Option<Link> {
    let number = *next_link;
    *next_link += 1;
    let named = dialed.named.as_ref();
    let url_stream = named.map_or_else(String::new, |(symbol, kind)| stream_name(symbol, *kind));
    info!(market = %plan.market, task = plan.task, link = number, route = %plan.route, n_streams = plan.streams.len(), %url_stream, "stream link established");
    // Counted before the runtime hears of it.
    let link = Link::new(
        number,
        dialed.socket,
        &plan.streams,
        named,
        settings,
        &plan.open_links,
    );
    frames
        .send(Inbound::Connected {
            market: plan.market,
            task: plan.task,
            link: number,
        })
        .await
        .ok()?;
    Some(link)
}

/// The dial under way, if any; pending for ever when there is none (a
/// `select!` branch that never fires).
pub(super) async fn dialed(dialing: &mut Option<Dialing>) -> Result<Dialed, LinkLost> {
    match dialing.as_mut() {
        Some(dial) => dial.await,
        None => std::future::pending().await,
    }
}

/// The route the reference gives a plan, and whether the other one was
/// tried: a plan whose streams are not delivered on its route (all silent,
/// or the URL refused) moves to the other route once; failing there too,
/// it goes back to the reference's route and stays. A route on which a
/// link of the plan delivered data is the streams' route: kept for good,
/// so a later link whose streams are quiet for a while (an illiquid
/// symbol, a halt) is not taken for one on the wrong route.
pub(super) struct RouteChoice {
    first: Route,
    tried: bool,
    settled: bool,
}

impl RouteChoice {
    pub(super) fn new(first: Route) -> RouteChoice {
        RouteChoice {
            first,
            tried: false,
            settled: false,
        }
    }

    pub(super) fn may_switch(&self, plan: &ConnectionPlan) -> bool {
        plan.route.other().is_some() && !self.settled
    }

    /// A link of `plan` delivered data on its route: the route is right.
    pub(super) fn delivered(&mut self, plan: &ConnectionPlan) {
        if self.settled || plan.route.other().is_none() {
            return;
        }
        self.settled = true;
        info!(market = %plan.market, task = plan.task, route = %plan.route, "streams delivered on this route: it is kept");
    }

    pub(super) fn switch(&mut self, plan: &mut ConnectionPlan, counters: &Counters) {
        let from = plan.route;
        if self.tried {
            plan.route = self.first;
            self.settled = true;
            warn!(market = %plan.market, task = plan.task, from = %from, to = %plan.route, "streams not delivered on either route: back to the reference's route, no more switching");
        } else if let Some(other) = plan.route.other() {
            plan.route = other;
            self.tried = true;
            warn!(market = %plan.market, task = plan.task, from = %from, to = %other, "streams not delivered on their route: trying the other route once");
        }
        Counters::add(&counters.stream_route_switches, 1);
    }
}
