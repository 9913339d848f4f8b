//! One OAuth2 access-token cache for every vendor that issues tokens (Contabo, 1NCE): a token is kept
//! per account until shortly before it expires, fetched by one caller at a time (single flight: callers
//! arriving meanwhile wait for that fetch and use its token), and dropped after a 401 only once per
//! token however many calls saw that 401 together.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token as the cache hands it out: its value and which fetch produced it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The access token.
    pub value: String,
    /// The fetch that produced it (pass it to [`TokenCache::rejected`] after a 401).
    pub generation: u64,
}

/// What a token fetch returns: the token and its lifetime.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The access token.
    pub value: String,
    /// Its lifetime (`expires_in`).
    pub lifetime: Duration,
}

#[derive(Debug, Default)]
struct State {
    token: Option<(String, Instant)>,
    generation: u64,
    fetches: u64,
}

/// A cached access token of one account.
#[derive(Debug, Default)]
pub struct TokenCache {
    state: Mutex<State>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached token while it is fresh, else one from `fetch` (called by one caller at a time).
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<Issued, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, E>>,
    {
        let mut state = self.state.lock().await;
        if let Some((value, renew_at)) = &state.token
            && Instant::now() < *renew_at
        {
            return Ok(Issued {
                value: value.clone(),
                generation: state.generation,
            });
        }
        let fetched = fetch().await?;
        state.fetches += 1;
        state.generation += 1;
        // Renew a little early: 10% of the lifetime, between 5 s and 60 s.
        let lifetime = fetched.lifetime.as_secs();
        let margin = (lifetime / 10).clamp(5, 60);
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin));
        state.token = Some((fetched.value.clone(), renew_at));
        Ok(Issued {
            value: fetched.value,
            generation: state.generation,
        })
    }

    /// The vendor refused the token of `generation` (a 401): drop it, unless a newer one already
    /// replaced it (another call saw the same 401 first).
    pub async fn rejected(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.generation == generation {
            state.token = None;
        }
    }

    /// How many tokens were fetched so far.
    pub async fn fetches(&self) -> u64 {
        self.state.lock().await.fetches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    async fn fetch(n: &AtomicU64) -> Result<Fetched, ()> {
        let i = n.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Fetched {
            value: format!("t{i}"),
            lifetime: Duration::from_secs(3600),
        })
    }

    #[tokio::test]
    async fn many_callers_fetch_once_and_a_shared_401_refreshes_once() {
        let cache = Arc::new(TokenCache::new());
        let n = Arc::new(AtomicU64::new(0));
        let calls = (0..100).map(|_| {
            let (cache, n) = (cache.clone(), n.clone());
            tokio::spawn(async move { cache.get(|| fetch(&n)).await.unwrap() })
        });
        let issued = futures::future::join_all(calls).await;
        assert!(issued.iter().all(|i| i.as_ref().unwrap().value == "t0"));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // All 100 calls see a 401 with that token: one refresh.
        let generation = issued[0].as_ref().unwrap().generation;
        let retries = (0..100).map(|_| {
            let (cache, n) = (cache.clone(), n.clone());
            tokio::spawn(async move {
                cache.rejected(generation).await;
                cache.get(|| fetch(&n)).await.unwrap()
            })
        });
        let again = futures::future::join_all(retries).await;
        assert!(again.iter().all(|i| i.as_ref().unwrap().value == "t1"));
        assert_eq!(cache.fetches().await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_renewed_before_it_expires() {
        let cache = TokenCache::new();
        let n = AtomicU64::new(0);
        assert_eq!(cache.get(|| fetch(&n)).await.unwrap().value, "t0");
        tokio::time::advance(Duration::from_secs(3600 - 61)).await;
        assert_eq!(cache.get(|| fetch(&n)).await.unwrap().value, "t0");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(|| fetch(&n)).await.unwrap().value, "t1");
    }
}
