//! The socket's budgets: request places and subscriber places, kept apart
//! so that neither a crowd of event subscribers nor a flood of idle
//! connections can keep a `status` out.
//!
//! - A connection takes one of [`MAX_CLIENTS`] request places when it is
//!   accepted. While it waits for its next request it is idle.
//! - An `events` request moves it to one of [`MAX_SUBSCRIBERS`] subscriber
//!   places, freeing its request place; with every subscriber place taken
//!   the request is answered with an error and the connection carries on.
//! - With every request place taken, a new connection gets [`ADMIT_WAIT`]
//!   to send its request. If it does, the connection idle the longest is
//!   closed (and told why) to make room; with none idle (every place is
//!   answering a request), root (uid 0, SO_PEERCRED) gets one of
//!   [`ROOT_RESERVE`] places kept for it and anyone else is refused.
//!   A connection that sends nothing in that time is refused: a flood of
//!   silent connections never displaces anyone. At most [`MAX_WAITING`]
//!   connections of other users wait at once; beyond, they are refused at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Request places: connections being served or waiting for their next
/// request (subscribers excluded).
pub const MAX_CLIENTS: usize = 64;
/// Event subscribers served at once, apart from the request places.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Request places beyond [`MAX_CLIENTS`] only root may take, when every
/// request place is busy answering: the operator's `status` during an
/// incident is never refused.
pub const ROOT_RESERVE: usize = 8;
/// With every request place taken, how long a new connection has to send
/// its request before it is refused. Clients send their request as soon as
/// they are connected; a connection silent this long is not one to make
/// room for.
pub const ADMIT_WAIT: Duration = Duration::from_millis(50);
/// Connections of users other than root waiting out [`ADMIT_WAIT`] at
/// once; more are refused at once, so a flood costs bounded memory.
pub const MAX_WAITING: usize = 64;

/// Every place, shared by the accept loop and the connections.
#[derive(Default)]
pub(super) struct Places {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// The request places taken, by connection.
    requests: HashMap<u64, Entry>,
    subscribers: usize,
    waiting: usize,
}

struct Entry {
    /// When it started waiting for its next request; None while one is answered.
    idle_since: Option<Instant>,
    /// Taken from [`ROOT_RESERVE`] rather than [`MAX_CLIENTS`].
    reserve: bool,
    /// Woken when the place is taken away (see [`Place::evicted`]).
    evict: Arc<Notify>,
}

impl Places {
    pub(super) fn new() -> Arc<Places> {
        Arc::new(Places::default())
    }

    /// A free request place, if any.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Place> {
        let mut inner = self.inner.lock().unwrap();
        inner.has_room().then(|| self.insert(&mut inner, false))
    }

    /// A place for a connection that sent its request while every place
    /// was taken: one freed meanwhile, else the place of the connection idle
    /// the longest (told to go), else (root only) one of the reserve.
    pub(super) fn admit_over_budget(self: &Arc<Self>, root: bool) -> Option<Place> {
        let mut inner = self.inner.lock().unwrap();
        if inner.has_room() {
            return Some(self.insert(&mut inner, false));
        }
        let longest_idle = inner
            .requests
            .iter()
            .filter_map(|(id, e)| e.idle_since.map(|t| (t, *id)))
            .min();
        if let Some((_, id)) = longest_idle {
            let gone = inner.requests.remove(&id).expect("listed just now");
            gone.evict.notify_one();
            return Some(self.insert(&mut inner, gone.reserve));
        }
        let reserved = inner.requests.values().filter(|e| e.reserve).count();
        (root && reserved < ROOT_RESERVE).then(|| self.insert(&mut inner, true))
    }

    /// Leave to wait out [`ADMIT_WAIT`]: always for root, else while fewer
    /// than [`MAX_WAITING`] wait.
    pub(super) fn wait(self: &Arc<Self>, root: bool) -> Option<Waiting> {
        if root {
            return Some(Waiting { places: None });
        }
        let mut inner = self.inner.lock().unwrap();
        if inner.waiting >= MAX_WAITING {
            return None;
        }
        inner.waiting += 1;
        Some(Waiting {
            places: Some(self.clone()),
        })
    }

    fn insert(self: &Arc<Self>, inner: &mut Inner, reserve: bool) -> Place {
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = Arc::new(Notify::new());
        inner.requests.insert(
            id,
            Entry {
                idle_since: Some(Instant::now()),
                reserve,
                evict: evict.clone(),
            },
        );
        Place {
            places: self.clone(),
            id,
            subscribed: false,
            evict,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }
}

impl Inner {
    fn has_room(&self) -> bool {
        self.requests.values().filter(|e| !e.reserve).count() < MAX_CLIENTS
    }
}

/// A connection's place, given back when dropped.
pub(super) struct Place {
    places: Arc<Places>,
    id: u64,
    /// Moved to a subscriber place.
    subscribed: bool,
    evict: Arc<Notify>,
}

impl Place {
    /// Waiting for the next request: the place may be taken away.
    pub(super) fn idle(&self) {
        self.places.with(|i| {
            if let Some(e) = i.requests.get_mut(&self.id) {
                e.idle_since = Some(Instant::now());
            }
        })
    }

    /// A request arrived: the place is kept while it is answered. False
    /// when the place was taken away first.
    pub(super) fn busy(&self) -> bool {
        self.places.with(|i| match i.requests.get_mut(&self.id) {
            Some(e) => {
                e.idle_since = None;
                true
            }
            None => false,
        })
    }

    /// Completes once the place was taken away for a newer connection.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await
    }

    /// Trade the request place for a subscriber place, if one is free.
    pub(super) fn subscribe(&mut self) -> bool {
        if self.subscribed {
            return true;
        }
        self.subscribed = self.places.with(|i| {
            if i.subscribers >= MAX_SUBSCRIBERS {
                return false;
            }
            i.subscribers += 1;
            i.requests.remove(&self.id);
            true
        });
        self.subscribed
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.with(|i| {
            if self.subscribed {
                i.subscribers -= 1;
            } else {
                i.requests.remove(&self.id);
            }
        })
    }
}

/// Leave to wait out [`ADMIT_WAIT`], given back when dropped.
pub(super) struct Waiting {
    /// None for root, who is not counted.
    places: Option<Arc<Places>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(p) = &self.places {
            p.with(|i| i.waiting -= 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(places: &Arc<Places>) -> Vec<Place> {
        (0..MAX_CLIENTS).map(|_| places.admit().unwrap()).collect()
    }

    #[test]
    fn a_full_budget_makes_room_by_closing_the_longest_idle() {
        let places = Places::new();
        let held = fill(&places);
        assert!(places.admit().is_none());
        // The oldest is busy answering: the next oldest idle one goes.
        assert!(held[0].busy());
        std::thread::sleep(Duration::from_millis(2));
        held[2].idle();
        let newer = places.admit_over_budget(false).expect("a place");
        assert!(!held[1].busy(), "the longest idle was not closed");
        assert!(held[2].busy() && held[0].busy());
        let notified = held[1].evict.notified();
        tokio::pin!(notified);
        assert!(notified.as_mut().enable(), "the evicted one was not told");
        drop(newer);
        assert!(places.admit().is_some());
    }

    #[test]
    fn with_every_place_busy_only_root_gets_the_reserve() {
        let places = Places::new();
        let held = fill(&places);
        for p in &held {
            assert!(p.busy());
        }
        assert!(places.admit_over_budget(false).is_none());
        let root: Vec<Place> = (0..ROOT_RESERVE)
            .map(|_| {
                let p = places.admit_over_budget(true).expect("root's reserve");
                assert!(p.busy());
                p
            })
            .collect();
        assert!(places.admit_over_budget(true).is_none(), "reserve bounded");
        // A reserve place freed is free for root only.
        drop(root);
        assert!(places.admit().is_none());
        assert!(places.admit_over_budget(true).is_some());
        drop(held);
        assert!(places.admit().is_some());
    }

    #[test]
    fn subscribers_have_their_own_budget() {
        let places = Places::new();
        let mut subs: Vec<Place> = (0..MAX_SUBSCRIBERS)
            .map(|_| {
                let mut p = places.admit().unwrap();
                assert!(p.busy() && p.subscribe());
                p
            })
            .collect();
        // Their request places are free again...
        let mut held = fill(&places);
        // ...and one more subscriber keeps its request place.
        held.pop();
        let mut more = places.admit().unwrap();
        assert!(!more.subscribe());
        assert!(places.admit().is_none());
        subs.pop();
        assert!(more.subscribe());
        assert!(places.admit().is_some());
    }

    #[test]
    fn waiting_is_bounded_except_for_root() {
        let places = Places::new();
        let w: Vec<Waiting> = (0..MAX_WAITING)
            .map(|_| places.wait(false).unwrap())
            .collect();
        assert!(places.wait(false).is_none());
        assert!(places.wait(true).is_some());
        drop(w);
        assert!(places.wait(false).is_some());
    }
}
