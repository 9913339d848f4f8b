//! An upstream URL, parsed once into what each request to it needs: the absolute URL (to connect),
//! the origin-form target and `Host` header of an HTTP/1 request, and the key of its connection pool —
//! so a request formats and parses nothing.

/// Which connections may carry a request: same scheme, same authority (kept lowercased, so hashing
/// it is one pass, not a byte at a time as `http`'s case-insensitive `Authority` hashes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    https: bool,
    authority: std::sync::Arc<str>,
}

/// An absolute `http`/`https` URL with a host, ready to send requests to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    uri: http::Uri,
    target: http::Uri,
    host: http::HeaderValue,
    key: PoolKey,
}

impl Endpoint {
    /// `url` as an endpoint, or `None` unless it is an absolute `http`/`https` URL with a host.
    pub fn parse(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        let default_port = if https { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let target = uri
            .path_and_query()
            .map_or_else(|| http::Uri::from_static("/"), |p| p.clone().into());
        Some(Self {
            host: http::HeaderValue::from_str(&host).ok()?,
            key: PoolKey {
                https,
                authority: authority.as_str().to_ascii_lowercase().into(),
            },
            target,
            uri,
        })
    }

    /// The absolute URL.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// The request target of an HTTP/1 request to it (origin form: path and query).
    pub fn target(&self) -> &http::Uri {
        &self.target
    }

    /// Its `Host` header: the host, and the port unless it is the scheme's default.
    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }

    /// The key of the connections that may carry requests to it.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_endpoints() {
        for ok in [
            "http://127.0.0.1:8080/v1/chat/completions",
            "https://openrouter.ai/api/v1/responses",
        ] {
            assert_eq!(
                Endpoint::parse(ok).map(|u| u.to_string()).as_deref(),
                Some(ok)
            );
        }
        for bad in [
            "not a url/chat",
            "/v1/chat/completions",
            "ftp://example.com/v1/x",
            "example.com/v1/x",
            "http:///v1/x",
        ] {
            assert!(Endpoint::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let host = |url: &str| {
            Endpoint::parse(url)
                .unwrap()
                .host()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(host("http://127.0.0.1:8080/v1"), "127.0.0.1:8080");
        assert_eq!(host("http://example.com:80/v1"), "example.com");
        assert_eq!(host("https://example.com:443/v1"), "example.com");
        assert_eq!(host("https://example.com:80/v1"), "example.com:80");
        assert_eq!(host("https://user:pw@example.com/v1"), "example.com");
        assert_eq!(host("http://[::1]:9/v1"), "[::1]:9");
    }

    #[test]
    fn the_target_is_the_path_and_query_and_the_key_the_scheme_and_authority() {
        let e = Endpoint::parse("https://example.com:8443/api/v1/chat?x=1").unwrap();
        assert_eq!(e.target().to_string(), "/api/v1/chat?x=1");
        assert_eq!(Endpoint::parse("http://example.com").unwrap().target(), "/");
        let key = |u: &str| Endpoint::parse(u).unwrap().key().clone();
        assert_eq!(
            key("https://example.com:8443/a"),
            key("https://example.com:8443/b")
        );
        assert_ne!(
            key("https://example.com/a"),
            key("http://example.com:443/a")
        );
        assert_ne!(key("http://a.example/x"), key("http://b.example/x"));
        assert_eq!(key("http://A.Example/x"), key("http://a.example/y"));
    }
}
