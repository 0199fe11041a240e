//! The fleet view: which edges poll the feed (by edge credential and instance name), what
//! they hold and how far behind they are.
//!
//! An edge's position is the `since` of its latest poll: the sequence number of the set
//! it applied last (the filter polls from the `x-edge-seq` it verified). An edge is
//! connected while a poll of it is in progress or its latest answer is at most
//! [`GRACE`] old (a filter polls again at once after an answer); an edge that stops
//! polling (killed, paused, cut off) stays in the view as disconnected, at the position it
//! last showed, until [`FORGET_AFTER`] without a poll.
//!
//! Lag in seconds is measured from the feed's head moves: for an edge at position `p`
//! below the head, it is the time since the head first passed `p` (kept for the last
//! [`MOVES_KEPT`] moves; older than that, the oldest kept move, a lower bound).
//!
//! Nothing here is a decision: the view is for operators (`GET /v1/edge/fleet`, the CLI's
//! `fleet`, and the `cp_edge_*` series of `/metrics`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use utoipa::ToSchema;

/// Who a poll comes from: the edge and the address it polls from.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The edge.
    pub(crate) id: EdgeId,
    /// The client address of its connection.
    pub(crate) address: Option<IpAddr>,
}

/// An edge without a poll in progress counts as connected this long after its latest
/// answer (seconds).
pub(crate) const GRACE: i64 = 5;

/// An edge without a poll for this long leaves the view (seconds).
pub(crate) const FORGET_AFTER: i64 = 3600;

/// Head moves kept to measure lag in seconds.
const MOVES_KEPT: usize = 4096;

/// Most edges tracked; past it, polls of new edges are served but not tracked (and
/// counted in the summary's `untracked_polls`).
const MAX_EDGES: usize = 100_000;

/// Who an edge is: its credential's name (`None`: polled without one) and the instance
/// name it sends in `x-edge-instance` (`-` when it sends none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EdgeId {
    /// The edge credential's name.
    pub(crate) credential: Option<Arc<str>>,
    /// The instance name.
    pub(crate) instance: Arc<str>,
}

#[derive(Debug)]
struct EdgeState {
    address: Option<IpAddr>,
    first_seen: i64,
    last_poll: i64,
    last_answer: Option<i64>,
    polls: u64,
    position: Option<u64>,
    in_progress: usize,
}

#[derive(Debug, Default)]
struct Inner {
    edges: HashMap<EdgeId, EdgeState>,
    /// `(seq, when)` for each head move, oldest first.
    moves: VecDeque<(u64, i64)>,
    untracked: u64,
}

/// The edges that poll this control plane's feed.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    inner: Mutex<Inner>,
}

/// A poll in progress, tracked until dropped (one lock when it arrives, one when it
/// ends).
pub(crate) struct Poll {
    fleet: Arc<Fleet>,
    id: Option<EdgeId>,
    answered: std::cell::Cell<Option<i64>>,
}

impl Drop for Poll {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let mut inner = self.fleet.lock();
        if let Some(edge) = inner.edges.get_mut(&id) {
            edge.in_progress = edge.in_progress.saturating_sub(1);
            if let Some(at) = self.answered.get() {
                edge.last_answer = Some(at);
            }
        }
    }
}

impl Poll {
    /// The poll was answered (with an update of any kind); recorded when it ends.
    pub(crate) fn answered(&self, at: i64) {
        self.answered.set(Some(at));
    }
}

/// One edge as the view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct EdgeView {
    /// The edge credential's name; `null`: polled without one.
    pub(crate) credential: Option<String>,
    /// The instance name (`x-edge-instance`; `-` when none is sent).
    pub(crate) instance: String,
    /// The address of its latest poll.
    pub(crate) address: Option<String>,
    /// A poll of it is in progress, or its latest answer is at most 5 s old.
    pub(crate) connected: bool,
    /// The sequence number of the set it holds (`null`: it asked for its first set).
    pub(crate) position: Option<u64>,
    /// Changes it lacks: the head minus its position.
    pub(crate) behind: u64,
    /// Seconds since the head first passed its position (0 when at the head).
    pub(crate) lag_seconds: i64,
    /// Its latest poll (RFC 3339).
    pub(crate) last_poll: String,
    /// First seen by this process (RFC 3339).
    pub(crate) first_seen: String,
    /// Polls seen from it.
    pub(crate) polls: u64,
}

/// Counts over the whole view.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub(crate) struct Summary {
    /// Edges in the view.
    pub(crate) edges: usize,
    /// Of them, connected.
    pub(crate) connected: usize,
    /// Connected edges at the head.
    pub(crate) at_head: usize,
    /// The lowest position of a connected edge (`null`: none has a set).
    pub(crate) oldest_position: Option<u64>,
    /// The largest lag of a connected edge, in seconds.
    pub(crate) max_lag_seconds: i64,
    /// Polls of edges past the tracking limit (100,000 edges), served but not shown.
    pub(crate) untracked_polls: u64,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A poll of `id` from `address` arrived, its edge holding `position`.
    pub(crate) fn arrived(
        self: &Arc<Self>,
        id: EdgeId,
        address: Option<IpAddr>,
        position: Option<u64>,
        at: i64,
    ) -> Poll {
        let mut inner = self.lock();
        if !inner.edges.contains_key(&id) && inner.edges.len() >= MAX_EDGES {
            inner
                .edges
                .retain(|_, e| e.in_progress > 0 || at - e.last_poll < FORGET_AFTER);
            if inner.edges.len() >= MAX_EDGES {
                inner.untracked += 1;
                return Poll {
                    fleet: self.clone(),
                    id: None,
                    answered: std::cell::Cell::new(None),
                };
            }
        }
        let edge = inner.edges.entry(id.clone()).or_insert(EdgeState {
            address,
            first_seen: at,
            last_poll: at,
            last_answer: None,
            polls: 0,
            position,
            in_progress: 0,
        });
        edge.address = address.or(edge.address);
        edge.last_poll = at;
        edge.polls += 1;
        edge.position = position;
        edge.in_progress += 1;
        Poll {
            fleet: self.clone(),
            id: Some(id),
            answered: std::cell::Cell::new(None),
        }
    }

    /// The feed's head moved to `seq` at `at`.
    pub(crate) fn head_moved(&self, seq: u64, at: i64) {
        let mut inner = self.lock();
        if inner.moves.back().is_some_and(|(s, _)| *s >= seq) {
            return;
        }
        if inner.moves.len() >= MOVES_KEPT {
            inner.moves.pop_front();
        }
        inner.moves.push_back((seq, at));
    }

    /// Every edge, with the summary, at feed head `head` and time `now`; edges not seen
    /// for [`FORGET_AFTER`] are dropped first.
    pub(crate) fn view(&self, head: u64, now: i64) -> (Vec<EdgeView>, Summary) {
        let mut edges = Vec::new();
        let summary = self.walk(head, now, |id, e, connected, behind, lag_seconds| {
            edges.push(EdgeView {
                credential: id.credential.as_deref().map(str::to_owned),
                instance: id.instance.to_string(),
                address: e.address.map(|a| a.to_string()),
                connected,
                position: e.position,
                behind,
                lag_seconds,
                last_poll: crate::time::rfc3339(e.last_poll),
                first_seen: crate::time::rfc3339(e.first_seen),
                polls: e.polls,
            });
        });
        edges.sort_by(|a, b| (&a.credential, &a.instance).cmp(&(&b.credential, &b.instance)));
        (edges, summary)
    }

    /// The summary alone (what `/metrics` shows): no list built, nothing allocated.
    pub(crate) fn summary(&self, head: u64, now: i64) -> Summary {
        self.walk(head, now, |_, _, _, _, _| {})
    }

    /// Drops the edges not seen for [`FORGET_AFTER`], then hands each of the others to
    /// `each` (with whether it is connected, how far behind, and its lag in seconds) and
    /// counts them into the summary.
    fn walk(
        &self,
        head: u64,
        now: i64,
        mut each: impl FnMut(&EdgeId, &EdgeState, bool, u64, i64),
    ) -> Summary {
        let mut inner = self.lock();
        inner
            .edges
            .retain(|_, e| e.in_progress > 0 || now - e.last_poll < FORGET_AFTER);
        let moves = &inner.moves;
        let lag = |position: Option<u64>| -> i64 {
            let p = position.unwrap_or(0);
            if p >= head {
                return 0;
            }
            // Moves are in seq order: the first one past `p`, found by bisection.
            let passed = moves
                .get(moves.partition_point(|(s, _)| *s <= p))
                .or(moves.front())
                .map_or(now, |(_, at)| *at);
            (now - passed).max(0)
        };
        let mut summary = Summary {
            untracked_polls: inner.untracked,
            ..Summary::default()
        };
        for (id, e) in &inner.edges {
            let connected = e.in_progress > 0
                || e.last_answer.is_some_and(|at| now - at <= GRACE)
                || (e.last_answer.is_none() && now - e.last_poll <= GRACE);
            let behind = head.saturating_sub(e.position.unwrap_or(0));
            let lag_seconds = lag(e.position);
            summary.edges += 1;
            if connected {
                summary.connected += 1;
                if behind == 0 {
                    summary.at_head += 1;
                }
                let p = e.position.unwrap_or(0);
                summary.oldest_position = Some(summary.oldest_position.map_or(p, |o| o.min(p)));
                summary.max_lag_seconds = summary.max_lag_seconds.max(lag_seconds);
            }
            each(id, e, connected, behind, lag_seconds);
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(instance: &str) -> EdgeId {
        EdgeId {
            credential: Some(Arc::from("fleet")),
            instance: Arc::from(instance),
        }
    }

    #[test]
    fn an_edge_that_stops_polling_shows_behind_and_then_disconnected() {
        let fleet = Arc::new(Fleet::default());
        fleet.head_moved(5, 100);
        let a = fleet.arrived(id("a"), None, Some(5), 100);
        let b = fleet.arrived(id("b"), None, Some(5), 100);
        // A revocation: both are answered; `a` polls again at once, `b` is paused.
        fleet.head_moved(6, 110);
        a.answered(110);
        b.answered(110);
        drop((a, b));
        let _a = fleet.arrived(id("a"), None, Some(6), 110);
        let (edges, summary) = fleet.view(6, 113);
        let b = edges.iter().find(|e| e.instance == "b").unwrap();
        assert_eq!((b.behind, b.lag_seconds, b.connected), (1, 3, true));
        assert_eq!((summary.connected, summary.at_head), (2, 1));
        assert_eq!(summary.oldest_position, Some(5));
        // Past the grace time without a poll: disconnected, still at its position.
        let (edges, summary) = fleet.view(6, 120);
        let b = edges.iter().find(|e| e.instance == "b").unwrap();
        assert_eq!(
            (b.connected, b.position, b.lag_seconds),
            (false, Some(5), 10)
        );
        assert_eq!(
            (summary.edges, summary.connected, summary.at_head),
            (2, 1, 1)
        );
        // Forgotten an hour later.
        let (edges, _) = fleet.view(6, 110 + FORGET_AFTER + 1);
        assert_eq!(edges.len(), 1, "only `a`, whose poll is in progress");
    }
}
