//! Vultr (work in progress: being replaced by the real client).

use async_trait::async_trait;

use super::{CloudError, ComputeProvider, Image, PowerAction, Region, Server, ServerSpec, Size};
use crate::http::HttpClient;

/// A Vultr account.
pub struct Vultr {
    _http: HttpClient,
}

impl Vultr {
    /// A client.
    pub fn new(http: HttpClient, _endpoint: Option<String>, _credentials: &str) -> Self {
        Self { _http: http }
    }
}

fn unsupported() -> CloudError {
    CloudError::Unsupported("vultr is not implemented yet".into())
}

#[async_trait]
impl ComputeProvider for Vultr {
    async fn verify(&self) -> Result<(), CloudError> {
        Err(unsupported())
    }
    async fn create(&self, _spec: &ServerSpec) -> Result<Server, CloudError> {
        Err(unsupported())
    }
    async fn get(&self, _id: &str) -> Result<Option<Server>, CloudError> {
        Err(unsupported())
    }
    async fn find_by_tag(&self, _tag: &str) -> Result<Vec<Server>, CloudError> {
        Err(unsupported())
    }
    async fn delete(&self, _id: &str) -> Result<(), CloudError> {
        Err(unsupported())
    }
    async fn power(&self, _id: &str, _action: PowerAction) -> Result<(), CloudError> {
        Err(unsupported())
    }
    async fn resize(&self, _id: &str, _size: &str) -> Result<(), CloudError> {
        Err(unsupported())
    }
    async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
        Err(unsupported())
    }
    async fn images(&self) -> Result<Vec<Image>, CloudError> {
        Err(unsupported())
    }
    async fn regions(&self) -> Result<Vec<Region>, CloudError> {
        Err(unsupported())
    }
    fn resize_needs_power_off(&self) -> bool {
        true
    }
    fn accepts_root_password(&self) -> bool {
        false
    }
    fn vendor(&self) -> &'static str {
        "vultr"
    }
}
