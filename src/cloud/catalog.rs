//! The vendor catalog (sizes with prices, images, regions), cached per ProviderConfig with a TTL, and the
//! checks a VirtualMachine must pass before create (unknown size/image/region → a message listing close
//! matches).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{CloudError, ComputeProvider, Image, Region, Size};

/// One vendor account's catalog.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Catalog {
    /// Sizes with prices.
    pub sizes: Vec<Size>,
    /// Images.
    pub images: Vec<Image>,
    /// Regions.
    pub regions: Vec<Region>,
}

impl Catalog {
    /// Fetches the whole catalog.
    pub async fn fetch(provider: &dyn ComputeProvider) -> Result<Self, CloudError> {
        Ok(Self {
            sizes: provider.sizes().await?,
            images: provider.images().await?,
            regions: provider.regions().await?,
        })
    }

    /// A size by slug.
    pub fn size(&self, slug: &str) -> Option<&Size> {
        self.sizes.iter().find(|s| s.slug == slug)
    }

    /// Checks region, size and image (`None`: the server is made from a snapshot, not a catalog image);
    /// `Err` holds a user-facing message with close matches.
    pub fn validate(&self, region: &str, size: &str, image: Option<&str>) -> Result<(), String> {
        if !self.regions.is_empty() && !self.regions.iter().any(|r| r.slug == region) {
            return Err(unknown(
                "region",
                region,
                self.regions.iter().map(|r| r.slug.as_str()),
            ));
        }
        self.validate_size(region, size)?;
        if let Some(image) = image
            && !self.images.is_empty()
            && !self.images.iter().any(|i| i.slug == image)
        {
            return Err(unknown(
                "image",
                image,
                self.images.iter().map(|i| i.slug.as_str()),
            ));
        }
        Ok(())
    }
}

impl Catalog {
    /// Checks that `size` exists and is offered in `region`; `Err` holds a user-facing message.
    pub fn validate_size(&self, region: &str, size: &str) -> Result<&Size, String> {
        let Some(s) = self.size(size) else {
            return Err(unknown(
                "size",
                size,
                self.sizes.iter().map(|s| s.slug.as_str()),
            ));
        };
        if !s.regions.is_empty() && !s.regions.iter().any(|r| r == region) {
            return Err(format!("size {size:?} is not offered in region {region:?}"));
        }
        Ok(s)
    }
}

fn unknown<'a>(what: &str, value: &str, known: impl Iterator<Item = &'a str>) -> String {
    let close = close_matches(value, known, 3);
    if close.is_empty() {
        format!("unknown {what} {value:?}")
    } else {
        format!(
            "unknown {what} {value:?}; did you mean {}?",
            close
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Up to `n` candidates closest to `value` (Levenshtein distance, then shared prefix), nearest first.
pub fn close_matches<'a>(
    value: &str,
    candidates: impl Iterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .map(|c| (levenshtein(value, c), c))
        .filter(|(d, c)| *d <= value.len().max(c.len()) / 2 + 1)
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_string())
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Catalogs cached per ProviderConfig name (and its generation, so a spec change refetches).
pub struct CatalogCache {
    ttl: Duration,
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

/// One key's catalog.
#[derive(Default)]
struct Slot {
    /// Fetches finished so far: a caller notes it before waiting, to tell whether a fetch ended meanwhile.
    fetches: AtomicU64,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The catalog and when it was fetched.
    fresh: Option<(Instant, Arc<Catalog>)>,
    /// The last fetch's error, while it is the newest fetch.
    failed: Option<CloudError>,
}

impl CatalogCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: std::sync::Mutex::default(),
        }
    }

    /// The cached catalog for `key`, fetched through `provider` when missing or older than the TTL.
    ///
    /// One fetch per key at a time: callers that arrive while it runs wait for it and share its answer —
    /// its catalog, or its error (they do not each try again) — so a thousand reconciles starting at once
    /// read the catalog from the vendor once, not a thousand times.
    pub async fn get(
        &self,
        key: &str,
        provider: &dyn ComputeProvider,
    ) -> Result<Arc<Catalog>, CloudError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let seen = slot.fetches.load(Ordering::Acquire);
        let mut s = slot.state.lock().await;
        if let Some((at, c)) = &s.fresh
            && at.elapsed() < self.ttl
        {
            return Ok(c.clone());
        }
        // A fetch ended while this caller waited for it: its answer is this caller's too, whatever the TTL.
        if slot.fetches.load(Ordering::Acquire) != seen {
            match (&s.failed, &s.fresh) {
                (Some(e), _) => return Err(e.clone()),
                (None, Some((_, c))) => return Ok(c.clone()),
                (None, None) => {}
            }
        }
        let fetched = Catalog::fetch(provider).await.map(Arc::new);
        match &fetched {
            Ok(c) => {
                s.fresh = Some((Instant::now(), c.clone()));
                s.failed = None;
            }
            Err(e) => s.failed = Some(e.clone()),
        }
        slot.fetches.fetch_add(1, Ordering::Release);
        fetched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn size(slug: &str, regions: &[&str]) -> Size {
        Size {
            slug: slug.into(),
            vcpus: 1,
            memory_mb: 1024,
            disk_gb: 25,
            price_hourly: Decimal::new(893, 5),
            price_monthly: Decimal::new(6, 0),
            currency: "USD".into(),
            regions: regions.iter().map(|s| s.to_string()).collect(),
            transfer_bytes: None,
            backup_price: None,
        }
    }

    #[test]
    fn validation_lists_close_matches() {
        let c = Catalog {
            sizes: vec![
                size("s-1vcpu-1gb", &["fra1"]),
                size("s-1vcpu-2gb", &["fra1"]),
                size("c-32", &[]),
            ],
            images: vec![Image {
                slug: "debian-12-x64".into(),
                name: "Debian 12".into(),
                kind: "distribution".into(),
            }],
            regions: vec![Region {
                slug: "fra1".into(),
                name: "Frankfurt 1".into(),
                available: true,
            }],
        };
        assert!(
            c.validate("fra1", "s-1vcpu-1gb", Some("debian-12-x64"))
                .is_ok()
        );
        let e = c
            .validate("fra1", "s-1vcpu-1g", Some("debian-12-x64"))
            .unwrap_err();
        assert!(
            e.starts_with("unknown size \"s-1vcpu-1g\"; did you mean \"s-1vcpu-1gb\""),
            "{e}"
        );
        let e = c
            .validate("fra2", "s-1vcpu-1gb", Some("debian-12-x64"))
            .unwrap_err();
        assert!(e.contains("did you mean \"fra1\""), "{e}");
        let e = c
            .validate("fra1", "s-1vcpu-1gb", Some("debain-12-x64"))
            .unwrap_err();
        assert!(e.contains("\"debian-12-x64\""), "{e}");
        let e = c
            .validate("fra1", "zzzzzzzzzzzzzzzz", Some("debian-12-x64"))
            .unwrap_err();
        assert_eq!(e, "unknown size \"zzzzzzzzzzzzzzzz\"");
    }

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    /// A vendor whose catalog calls are counted and slow (so that callers overlap); it fails while
    /// `failing` is set.
    #[derive(Default)]
    struct SlowVendor {
        catalog_calls: std::sync::atomic::AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    impl SlowVendor {
        async fn answer<T>(&self, v: T) -> Result<T, CloudError> {
            self.catalog_calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(CloudError::Http(crate::http::HttpError::Status {
                    vendor: "test",
                    status: 503,
                    message: "down for maintenance".into(),
                    retry_after: None,
                }));
            }
            Ok(v)
        }
    }

    #[async_trait::async_trait]
    impl ComputeProvider for SlowVendor {
        async fn verify(&self) -> Result<(), CloudError> {
            Ok(())
        }
        async fn create(
            &self,
            _: &crate::cloud::ServerSpec,
        ) -> Result<crate::cloud::Server, CloudError> {
            Err(CloudError::Unsupported("test".into()))
        }
        async fn get(&self, _: &str) -> Result<Option<crate::cloud::Server>, CloudError> {
            Ok(None)
        }
        async fn find_by_tag(&self, _: &str) -> Result<Vec<crate::cloud::Server>, CloudError> {
            Ok(vec![])
        }
        async fn delete(&self, _: &str) -> Result<(), CloudError> {
            Ok(())
        }
        async fn power(&self, _: &str, _: crate::cloud::PowerAction) -> Result<(), CloudError> {
            Ok(())
        }
        async fn resize(&self, _: &str, _: &str) -> Result<(), CloudError> {
            Ok(())
        }
        async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
            self.answer(vec![size("s-1vcpu-1gb", &["fra1"])]).await
        }
        async fn images(&self) -> Result<Vec<Image>, CloudError> {
            self.answer(vec![]).await
        }
        async fn regions(&self) -> Result<Vec<Region>, CloudError> {
            self.answer(vec![]).await
        }
        fn resize_needs_power_off(&self) -> bool {
            false
        }
        fn accepts_root_password(&self, _windows: bool) -> bool {
            false
        }
        fn vendor(&self) -> &'static str {
            "test"
        }
    }

    /// `n` concurrent gets of one key; their results.
    async fn concurrent_gets(
        cache: &Arc<CatalogCache>,
        vendor: &Arc<SlowVendor>,
        n: usize,
    ) -> Vec<Result<Arc<Catalog>, CloudError>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, vendor) = (cache.clone(), vendor.clone());
                tokio::spawn(async move { cache.get("pc/fingerprint", &*vendor).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| panic!("task: {e}")));
        }
        out
    }

    #[tokio::test]
    async fn callers_arriving_together_share_one_fetch_of_its_catalog_or_its_error() {
        let cache = Arc::new(CatalogCache::new(Duration::from_secs(3600)));
        let vendor = Arc::new(SlowVendor::default());

        // A vendor outage: 100 callers at once make one fetch (its first call fails) and all see its error.
        vendor.failing.store(true, Ordering::SeqCst);
        let failed = concurrent_gets(&cache, &vendor, 100).await;
        assert_eq!(vendor.catalog_calls.load(Ordering::SeqCst), 1);
        assert!(failed.iter().all(|r| {
            r.as_ref()
                .is_err_and(|e| e.is_transient() && e.to_string().contains("down for maintenance"))
        }));

        // Once it is back, the next callers fetch again (an error is not cached): one fetch of 3 calls.
        vendor.failing.store(false, Ordering::SeqCst);
        let ok = concurrent_gets(&cache, &vendor, 100).await;
        assert_eq!(vendor.catalog_calls.load(Ordering::SeqCst), 1 + 3);
        assert!(
            ok.iter()
                .all(|r| r.as_ref().is_ok_and(|c| c.sizes.len() == 1))
        );

        // Cached for the TTL: no call at all.
        concurrent_gets(&cache, &vendor, 10).await;
        assert_eq!(vendor.catalog_calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_expired_catalog_is_fetched_again() {
        let cache = Arc::new(CatalogCache::new(Duration::ZERO));
        let vendor = Arc::new(SlowVendor::default());
        concurrent_gets(&cache, &vendor, 1).await;
        concurrent_gets(&cache, &vendor, 1).await;
        assert_eq!(vendor.catalog_calls.load(Ordering::SeqCst), 6);
        // Callers that waited for a fetch take its catalog, however short the TTL.
        let shared = concurrent_gets(&cache, &vendor, 10).await;
        assert_eq!(vendor.catalog_calls.load(Ordering::SeqCst), 9);
        assert!(shared.iter().all(|r| r.is_ok()));
    }
}
