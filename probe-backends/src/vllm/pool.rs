//! The server pool: which server gets the next request (least outstanding requests among
//! the healthy ones), which servers are out, and when an out server is probed again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The state of one server.
#[derive(Debug, Clone, Default)]
struct ServerState {
    /// Requests sent and not yet answered.
    outstanding: usize,
    /// Retryable failures in a row.
    consecutive_failures: u32,
    /// After a failure, other servers are preferred until this instant.
    avoid_until: Option<Instant>,
    /// Set while the server is out: it gets no requests, only a probe after this instant.
    down_until: Option<Instant>,
    /// Its model list was checked (and lists the model).
    verified: bool,
    /// A probe is running.
    probing: bool,
}

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Send the request to server `i` (its outstanding count was raised: hold the lease).
    Use(usize),
    /// Server `i` needs a probe (`GET /v1/models`) first; report with `probe_done`.
    Probe(usize),
    /// No server can take work now; try again at `until`. `probing` is true when a probe is
    /// running (the wait is short and is not a failure); false when every server is out.
    Wait {
        /// When to pick again.
        until: Instant,
        /// A probe is running.
        probing: bool,
    },
}

/// Servers and their state, shared by every request of a generator.
#[derive(Debug)]
pub(crate) struct Pool {
    urls: Vec<String>,
    state: Mutex<Vec<ServerState>>,
    rotation: AtomicUsize,
    failure_threshold: u32,
    probe_interval: Duration,
}

impl Pool {
    /// A pool over `urls`, none of them checked yet.
    pub(crate) fn new(urls: Vec<String>, failure_threshold: u32, probe_interval: Duration) -> Self {
        let state = Mutex::new(vec![ServerState::default(); urls.len()]);
        Self { urls, state, rotation: AtomicUsize::new(0), failure_threshold, probe_interval }
    }

    /// The servers' base URLs.
    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServerState>> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Chooses where the next request goes: among servers that are in and checked, the one
    /// with the fewest outstanding requests (ties rotate), servers that failed within the last
    /// probe interval only when no other is in;
    /// otherwise an unchecked or due server to probe; otherwise when to come back.
    pub(crate) fn pick(&self, now: Instant) -> Pick {
        let mut st = self.lock();
        let n = st.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| st[i].verified && st[i].down_until.is_none())
            .min_by_key(|&i| (st[i].avoid_until.is_some_and(|t| t > now), st[i].outstanding));
        if let Some(i) = best {
            st[i].outstanding += 1;
            return Pick::Use(i);
        }
        let due = (0..n).map(|k| (start + k) % n).find(|&i| {
            let s = &st[i];
            let not_resting = s.down_until.is_none_or(|t| t <= now);
            !s.probing && not_resting && (!s.verified || s.down_until.is_some())
        });
        if let Some(i) = due {
            st[i].probing = true;
            return Pick::Probe(i);
        }
        if st.iter().any(|s| s.probing) {
            return Pick::Wait { until: now + Duration::from_millis(20), probing: true };
        }
        let next = st.iter().filter_map(|s| s.down_until).filter(|&t| t > now).min();
        Pick::Wait { until: next.unwrap_or(now + self.probe_interval), probing: false }
    }

    /// A probe of server `i` finished: `ok` means it answered and lists the model.
    pub(crate) fn probe_done(&self, i: usize, ok: bool, now: Instant) {
        let mut st = self.lock();
        let s = &mut st[i];
        s.probing = false;
        if ok {
            s.verified = true;
            s.down_until = None;
            s.avoid_until = None;
            s.consecutive_failures = 0;
        } else {
            s.down_until = Some(now + self.probe_interval);
        }
    }

    /// Marks server `i` checked without a probe (its model list was read another way).
    #[cfg(test)]
    pub(crate) fn mark_verified(&self, i: usize) {
        self.lock()[i].verified = true;
    }

    /// The request on server `i` is over (answered or failed): lowers its outstanding count.
    pub(crate) fn release(&self, i: usize) {
        let mut st = self.lock();
        st[i].outstanding = st[i].outstanding.saturating_sub(1);
    }

    /// Server `i` answered.
    pub(crate) fn success(&self, i: usize) {
        let mut st = self.lock();
        st[i].consecutive_failures = 0;
        st[i].avoid_until = None;
    }

    /// Server `i` failed in a retryable way. Returns true when this took it out.
    pub(crate) fn failure(&self, i: usize, now: Instant) -> bool {
        let mut st = self.lock();
        let s = &mut st[i];
        s.consecutive_failures += 1;
        s.avoid_until = Some(now + self.probe_interval);
        if s.down_until.is_none() && s.consecutive_failures >= self.failure_threshold {
            s.down_until = Some(now + self.probe_interval);
            true
        } else {
            false
        }
    }

    /// Outstanding requests per server (for tests and logs).
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> Vec<usize> {
        self.lock().iter().map(|s| s.outstanding).collect()
    }

    /// Whether server `i` is out.
    #[cfg(test)]
    pub(crate) fn is_down(&self, i: usize) -> bool {
        self.lock()[i].down_until.is_some()
    }
}

/// Holds one outstanding request on a server; lowers the count when dropped.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    /// The server.
    pub(crate) index: usize,
}

impl<'a> Lease<'a> {
    /// Takes over the count raised by [`Pool::pick`] returning `Pick::Use(index)`.
    pub(crate) fn new(pool: &'a Pool, index: usize) -> Self {
        Self { pool, index }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let p = Pool::new((0..n).map(|i| format!("http://s{i}")).collect(), 2, Duration::from_secs(5));
        for i in 0..n {
            p.mark_verified(i);
        }
        p
    }

    #[test]
    fn least_outstanding_spreads_work() {
        let p = pool(3);
        let now = Instant::now();
        let mut picks = Vec::new();
        for _ in 0..6 {
            match p.pick(now) {
                Pick::Use(i) => picks.push(i),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(p.outstanding(), vec![2, 2, 2], "six requests spread evenly: {picks:?}");
        p.release(1);
        p.release(1);
        assert_eq!(p.pick(now), Pick::Use(1), "the least loaded server gets the next one");
    }

    #[test]
    fn failing_server_is_avoided_taken_out_and_probed_later() {
        let p = pool(2);
        let t0 = Instant::now();
        assert!(!p.failure(0, t0));
        for _ in 0..4 {
            assert_eq!(p.pick(t0), Pick::Use(1), "a server that just failed is avoided");
        }
        let after = t0 + Duration::from_secs(6);
        assert_eq!(p.pick(after), Pick::Use(0), "and used again once its cool-down is over");
        p.release(0);
        assert!(p.failure(0, t0), "second failure in a row takes it out");
        assert!(p.is_down(0));
        p.failure(1, t0);
        p.failure(1, t0);
        assert!(p.is_down(1));
        match p.pick(t0) {
            Pick::Wait { until, probing } => assert_eq!((until, probing), (t0 + Duration::from_secs(5), false)),
            other => panic!("all out: wait, got {other:?}"),
        }
        let later = t0 + Duration::from_secs(6);
        let Pick::Probe(i) = p.pick(later) else { panic!("a due server is probed") };
        let Pick::Probe(j) = p.pick(later) else { panic!("the other due server is probed") };
        assert_ne!(i, j, "one probe per server at a time");
        p.probe_done(i, true, later);
        p.probe_done(j, false, later);
        assert_eq!(p.pick(later), Pick::Use(i), "a server that answered its probe is back");
        assert!(p.is_down(j), "a failed probe keeps it out");
    }

    #[test]
    fn unchecked_servers_are_probed_first() {
        let p = Pool::new(vec!["http://a".into()], 3, Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(p.pick(now), Pick::Probe(0));
        assert!(matches!(p.pick(now), Pick::Wait { probing: true, .. }), "one probe at a time");
        p.probe_done(0, false, now);
        assert!(
            matches!(p.pick(now), Pick::Wait { probing: false, .. }),
            "an unchecked server whose probe failed rests until its next probe"
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(p.pick(later), Pick::Probe(0));
        p.probe_done(0, true, now);
        assert_eq!(p.pick(now), Pick::Use(0));
        let lease = Lease::new(&p, 0);
        assert_eq!(p.outstanding(), vec![1]);
        drop(lease);
        assert_eq!(p.outstanding(), vec![0], "a lease releases its request");
    }
}
