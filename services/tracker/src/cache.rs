//! A small TTL cache that coalesces concurrent misses.
//!
//! When an image rolls out, thousands of agents ask for the same blob within a second. Without
//! coalescing, every one of them would miss the cache together and each would call the
//! origins; here the first miss starts the fetch and every concurrent caller awaits that same
//! fetch. Only successes are cached: a failure reaches the callers that were waiting for it,
//! and the next caller tries again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

/// How a value was obtained, for hit/miss metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// From the cache.
    Hit,
    /// By awaiting a fetch another caller had started.
    Joined,
    /// By a fetch this call started.
    Fetched,
}

impl Lookup {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Joined => "joined",
            Lookup::Fetched => "miss",
        }
    }
}

type Fetch<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

pub(crate) struct CoalescingCache<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> std::fmt::Debug for CoalescingCache<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescingCache")
            .field("ttl", &self.inner.ttl)
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

struct Inner<K, V, E> {
    ttl: Duration,
    capacity: usize,
    state: Mutex<State<K, V, E>>,
}

struct State<K, V, E> {
    entries: HashMap<K, (V, Instant)>,
    in_flight: HashMap<K, Fetch<V, E>>,
}

impl<K, V, E> CoalescingCache<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A cache keeping successes for `ttl`, at most `capacity` of them.
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                capacity: capacity.max(1),
                state: Mutex::new(State {
                    entries: HashMap::new(),
                    in_flight: HashMap::new(),
                }),
            }),
        }
    }

    /// The cached value for `key`, or the result of the fetch in flight for it, or of
    /// `fetch()`, which is called only when neither exists.
    pub(crate) async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> (Result<V, E>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (pending, lookup) = {
            let mut state = self.inner.lock();
            let now = Instant::now();
            match state.entries.get(&key) {
                Some((value, expires)) if *expires > now => {
                    return (Ok(value.clone()), Lookup::Hit);
                }
                Some(_) => {
                    state.entries.remove(&key);
                }
                None => {}
            }
            if let Some(pending) = state.in_flight.get(&key) {
                (pending.clone(), Lookup::Joined)
            } else {
                let fut = fetch();
                // Weak: the in-flight map holds this future, and a strong reference back to
                // the map would keep both alive forever if every waiter gave up.
                let inner = Arc::downgrade(&self.inner);
                let fetch_key = key.clone();
                let pending = async move {
                    let result = fut.await;
                    complete(&inner, fetch_key, &result);
                    result
                }
                .boxed()
                .shared();
                state.in_flight.insert(key, pending.clone());
                (pending, Lookup::Fetched)
            }
        };
        // If every waiter is cancelled, the fetch pauses where it was and the next caller
        // for the key resumes it.
        (pending.await, lookup)
    }

    /// Number of cached values (expired ones not yet evicted included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

impl<K, V, E> Inner<K, V, E> {
    fn lock(&self) -> MutexGuard<'_, State<K, V, E>> {
        // The critical sections only insert and remove whole entries.
        kraken_core::sync::lock(&self.state)
    }
}

fn complete<K: Eq + Hash, V: Clone, E>(
    inner: &Weak<Inner<K, V, E>>,
    key: K,
    result: &Result<V, E>,
) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let mut state = inner.lock();
    state.in_flight.remove(&key);
    let Ok(value) = result else {
        return;
    };
    let now = Instant::now();
    if state.entries.len() >= inner.capacity {
        state.entries.retain(|_, (_, expires)| *expires > now);
    }
    if state.entries.len() >= inner.capacity {
        // Still full of live entries: drop the one closest to expiring.
        let oldest = state
            .entries
            .iter()
            .min_by_key(|(_, (_, expires))| *expires)
            .map(|(_, (_, expires))| *expires);
        if let Some(oldest) = oldest {
            let mut removed = false;
            state.entries.retain(|_, (_, expires)| {
                let drop = !removed && *expires == oldest;
                removed |= drop;
                !drop
            });
        }
    }
    state.entries.insert(key, (value.clone(), now + inner.ttl));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cache = CoalescingCache<u32, String, String>;

    async fn fetch_counted(
        cache: &Cache,
        key: u32,
        calls: &Arc<AtomicUsize>,
        result: Result<&str, &str>,
    ) -> (Result<String, String>, Lookup) {
        let calls = Arc::clone(calls);
        let result = result.map(str::to_owned).map_err(str::to_owned);
        cache
            .get_or_fetch(key, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                result
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn caches_successes_for_the_ttl_only() {
        let cache = Cache::new(Duration::from_secs(5), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        let (value, lookup) = fetch_counted(&cache, 1, &calls, Ok("a")).await;
        assert_eq!((value.unwrap().as_str(), lookup), ("a", Lookup::Fetched));
        let (value, lookup) = fetch_counted(&cache, 1, &calls, Ok("b")).await;
        assert_eq!((value.unwrap().as_str(), lookup), ("a", Lookup::Hit));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        tokio::time::advance(Duration::from_secs(6)).await;
        let (value, lookup) = fetch_counted(&cache, 1, &calls, Ok("b")).await;
        assert_eq!((value.unwrap().as_str(), lookup), ("b", Lookup::Fetched));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn never_caches_failures() {
        let cache = Cache::new(Duration::from_secs(5), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        assert!(
            fetch_counted(&cache, 1, &calls, Err("down"))
                .await
                .0
                .is_err()
        );
        assert!(
            fetch_counted(&cache, 1, &calls, Err("down"))
                .await
                .0
                .is_err()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Cache::new(Duration::from_secs(5), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        let results =
            futures::future::join_all((0..50).map(|_| fetch_counted(&cache, 7, &calls, Ok("v"))))
                .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|(v, _)| v.as_deref() == Ok("v")));
        let joined = results.iter().filter(|(_, l)| *l == Lookup::Joined).count();
        assert_eq!(joined, 49);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_fetch_is_resumed_by_the_next_caller() {
        let cache = Cache::new(Duration::from_secs(5), 10);
        let calls = Arc::new(AtomicUsize::new(0));
        let abandoned = tokio::time::timeout(
            Duration::from_millis(1),
            fetch_counted(&cache, 3, &calls, Ok("first")),
        )
        .await;
        assert!(abandoned.is_err());
        let (value, lookup) = fetch_counted(&cache, 3, &calls, Ok("second")).await;
        assert_eq!((value.unwrap().as_str(), lookup), ("first", Lookup::Joined));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stays_within_capacity() {
        let cache = Cache::new(Duration::from_secs(60), 4);
        let calls = Arc::new(AtomicUsize::new(0));
        for key in 0..10 {
            fetch_counted(&cache, key, &calls, Ok("v")).await.0.unwrap();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(cache.len(), 4);
        // The newest entries survive.
        let (_, lookup) = fetch_counted(&cache, 9, &calls, Ok("v")).await;
        assert_eq!(lookup, Lookup::Hit);
        let (_, lookup) = fetch_counted(&cache, 0, &calls, Ok("v")).await;
        assert_eq!(lookup, Lookup::Fetched);
    }
}
