//! The vendor catalog (sizes with prices, images, regions), cached per ProviderConfig with a TTL, and the
//! checks a VirtualMachine must pass before create (unknown size/image/region → a message listing close
//! matches).

use std::collections::HashMap;
use std::sync::Arc;
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

    /// Checks region, size and image; `Err` holds a user-facing message with close matches.
    pub fn validate(&self, region: &str, size: &str, image: &str) -> Result<(), String> {
        if !self.regions.is_empty() && !self.regions.iter().any(|r| r.slug == region) {
            return Err(unknown(
                "region",
                region,
                self.regions.iter().map(|r| r.slug.as_str()),
            ));
        }
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
        if !self.images.is_empty() && !self.images.iter().any(|i| i.slug == image) {
            return Err(unknown(
                "image",
                image,
                self.images.iter().map(|i| i.slug.as_str()),
            ));
        }
        Ok(())
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
    entries: Mutex<HashMap<String, (Instant, Arc<Catalog>)>>,
}

impl CatalogCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The cached catalog for `key`, fetched through `provider` when missing or older than the TTL.
    pub async fn get(
        &self,
        key: &str,
        provider: &dyn ComputeProvider,
    ) -> Result<Arc<Catalog>, CloudError> {
        if let Some((at, c)) = self.entries.lock().await.get(key)
            && at.elapsed() < self.ttl
        {
            return Ok(c.clone());
        }
        let fresh = Arc::new(Catalog::fetch(provider).await?);
        self.entries
            .lock()
            .await
            .insert(key.to_string(), (Instant::now(), fresh.clone()));
        Ok(fresh)
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
        assert!(c.validate("fra1", "s-1vcpu-1gb", "debian-12-x64").is_ok());
        let e = c
            .validate("fra1", "s-1vcpu-1g", "debian-12-x64")
            .unwrap_err();
        assert!(
            e.starts_with("unknown size \"s-1vcpu-1g\"; did you mean \"s-1vcpu-1gb\""),
            "{e}"
        );
        let e = c
            .validate("fra2", "s-1vcpu-1gb", "debian-12-x64")
            .unwrap_err();
        assert!(e.contains("did you mean \"fra1\""), "{e}");
        let e = c
            .validate("fra1", "s-1vcpu-1gb", "debain-12-x64")
            .unwrap_err();
        assert!(e.contains("\"debian-12-x64\""), "{e}");
        let e = c
            .validate("fra1", "zzzzzzzzzzzzzzzz", "debian-12-x64")
            .unwrap_err();
        assert_eq!(e, "unknown size \"zzzzzzzzzzzzzzzz\"");
    }

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }
}
