//! The small pieces every vendor client repeats: a bearer-token API (base URL + token, never shown by
//! `Debug`), numeric IDs kept out of URL paths, "404 means there is none", and the item array of a list
//! page. Vendor DTOs stay in each vendor's own file; nothing here knows a vendor's shapes.

use reqwest::Method;

use super::CloudError;
use crate::http::{HttpClient, HttpError};

/// A vendor API reached with a bearer token: the HTTP client, the base URL and the token.
pub struct BearerApi {
    /// The vendor's HTTP client (retries, rate limit, metrics).
    pub http: HttpClient,
    base: String,
    token: String,
}

impl std::fmt::Debug for BearerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerApi")
            .field("vendor", &self.http.vendor())
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl BearerApi {
    /// An API at `endpoint` (or `default_endpoint`) with `token` (surrounding whitespace, such as the
    /// newline a Secret made from a file carries, is dropped).
    pub fn new(
        http: HttpClient,
        endpoint: Option<String>,
        default_endpoint: &str,
        token: &str,
    ) -> Self {
        Self {
            http,
            base: endpoint.unwrap_or_else(|| default_endpoint.into()),
            token: token.trim().to_string(),
        }
    }

    /// A request to `path` (appended to the base URL) carrying the token.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, &format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// The vendor's name, for error messages.
    pub fn vendor(&self) -> &'static str {
        self.http.vendor()
    }
}

/// `id` when it is a vendor's integer ID; anything else cannot name a server (and is kept out of URL
/// paths).
pub fn numeric_id(id: &str) -> Option<&str> {
    let id = id.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// `id` when it is one safe URL path segment (letters, digits, `-` and `_`, as in a UUID); anything else
/// cannot name a server.
pub fn segment_id(id: &str) -> Option<&str> {
    let id = id.trim();
    (!id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')))
    .then_some(id)
}

/// The 404 a vendor would give for an ID that cannot exist (see [`numeric_id`]).
pub fn not_an_id(vendor: &'static str, id: &str) -> CloudError {
    HttpError::Status {
        vendor,
        status: 404,
        message: format!("{id:?} is not a {vendor} server ID"),
        retry_after: None,
    }
    .into()
}

/// Whether the vendor said "not found".
pub fn is_not_found(e: &CloudError) -> bool {
    matches!(e, CloudError::Http(h) if h.status() == Some(404))
}

/// A read whose 404 means "there is none".
pub fn none_if_not_found<T, E: Into<CloudError>>(
    result: Result<T, E>,
) -> Result<Option<T>, CloudError> {
    match result.map_err(Into::into) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A deletion or an untagging whose 404 means "already done".
pub fn done_if_not_found<T, E: Into<CloudError>>(result: Result<T, E>) -> Result<(), CloudError> {
    none_if_not_found(result).map(|_| ())
}

/// The items of one list page: the array under `key`, decoded.
pub fn page_items<T: serde::de::DeserializeOwned>(
    vendor: &'static str,
    page: &serde_json::Value,
    key: &str,
) -> Result<Vec<T>, HttpError> {
    serde_json::from_value(page[key].clone()).map_err(|e| HttpError::Decode {
        vendor,
        message: format!("{key}: {e}"),
    })
}

/// `tags` with `tag` added (once), or with every copy of it removed; `None` when nothing changes.
pub fn retag(tags: &[String], tag: &str, present: bool) -> Option<Vec<String>> {
    let has = tags.iter().any(|t| t == tag);
    match (present, has) {
        (true, false) => Some(tags.iter().cloned().chain([tag.to_string()]).collect()),
        (false, true) => Some(tags.iter().filter(|t| *t != tag).cloned().collect()),
        _ => None,
    }
}

/// For vendors whose API replaces a server's whole tag list: the list to write so that `tag` is
/// (`present`) or is not on the server whose current tags are `current` (`None`: the server does not
/// exist). `Ok(None)`: nothing to write (already so, or a server that is gone has nothing to release);
/// adding to a server that does not exist is the vendor's 404.
pub fn tag_list_to_write(
    vendor: &'static str,
    id: &str,
    current: Option<&[String]>,
    tag: &str,
    present: bool,
) -> Result<Option<Vec<String>>, CloudError> {
    match current {
        Some(tags) => Ok(retag(tags, tag, present)),
        None if present => Err(not_an_id(vendor, id)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RetryPolicy;

    fn status(code: u16) -> HttpError {
        HttpError::Status {
            vendor: "x",
            status: code,
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn numeric_ids_only() {
        assert_eq!(numeric_id(" 42 "), Some("42"));
        for bad in ["", "4a", "../x", "-1", "1 2"] {
            assert_eq!(numeric_id(bad), None, "{bad:?}");
        }
        assert!(is_not_found(&not_an_id("linode", "x")));
        assert_eq!(
            segment_id("cb676a46-66fd-4dfb-b839-443f2e6c0b60"),
            Some("cb676a46-66fd-4dfb-b839-443f2e6c0b60")
        );
        for bad in ["", "../account", "a/b", "a?b", "a%2F"] {
            assert_eq!(segment_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn not_found_is_none_other_errors_stay() {
        assert_eq!(none_if_not_found(Ok::<_, HttpError>(1)).unwrap(), Some(1));
        assert_eq!(none_if_not_found::<u8, _>(Err(status(404))).unwrap(), None);
        let e = none_if_not_found::<u8, _>(Err(status(500))).unwrap_err();
        assert!(e.is_transient());
        assert!(done_if_not_found::<u8, _>(Err(status(404))).is_ok());
        assert!(done_if_not_found::<u8, _>(Err(status(403))).is_err());
    }

    #[test]
    fn page_items_decode_or_say_which_key() {
        let page = serde_json::json!({"droplets": [1, 2], "bad": "x"});
        assert_eq!(page_items::<u32>("x", &page, "droplets").unwrap(), [1, 2]);
        let e = page_items::<u32>("x", &page, "bad").unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn retag_adds_once_and_removes_all() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(retag(&t(&["a"]), "b", true), Some(t(&["a", "b"])));
        assert_eq!(retag(&t(&["a", "b"]), "b", true), None);
        assert_eq!(retag(&t(&["b", "a", "b"]), "b", false), Some(t(&["a"])));
        assert_eq!(retag(&t(&["a"]), "b", false), None);
        let gone = tag_list_to_write("vultr", "7", None, "b", true).unwrap_err();
        assert!(is_not_found(&gone));
        assert_eq!(
            tag_list_to_write("vultr", "7", None, "b", false).unwrap(),
            None
        );
        assert_eq!(
            tag_list_to_write("vultr", "7", Some(&t(&["a"])), "b", true).unwrap(),
            Some(t(&["a", "b"]))
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let api = BearerApi::new(
            HttpClient::new("linode", RetryPolicy::default()),
            None,
            "https://example.invalid",
            "secret-token\n",
        );
        let shown = format!("{api:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}
