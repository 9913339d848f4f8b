//! The routes the gateway meters (and so proxies), with what each needs of a request.

/// A metered route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Route {
    /// Every route, in [`Route::index`] order.
    pub const ALL: [Route; 4] = [
        Self::Chat,
        Self::Responses,
        Self::Completions,
        Self::Embeddings,
    ];

    /// Its place in [`Route::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The path under the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Responses => "/responses",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
        }
    }
}
