//! The routes the gateway meters (and so proxies), with what each needs of a request.

use super::request_body::RequestBody;

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

    /// The request's own output limit, and the field the gateway sets when there is none.
    pub(super) fn output_limit(self, req: &RequestBody) -> (Option<i64>, Option<&'static str>) {
        let get = |f: &str| req.i64(f);
        match self {
            Self::Chat => (
                get("max_completion_tokens").or_else(|| get("max_tokens")),
                Some("max_tokens"),
            ),
            Self::Completions => (get("max_tokens"), Some("max_tokens")),
            Self::Responses => (get("max_output_tokens"), Some("max_output_tokens")),
            Self::Embeddings => (Some(0), None),
        }
    }
}
