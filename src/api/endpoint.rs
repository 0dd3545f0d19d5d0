//! Which host the calls go to: `https://onsmqtt.<region>.aliyuncs.com` (the SDK's regional rule,
//! onsmqtt-api.md §1), or an explicit `--endpoint`. Plain http is allowed only for a loopback
//! host, where the simulator lives: credentials never cross a network unencrypted.

use std::net::IpAddr;

use reqwest::Url;

pub const DEFAULT_REGION: &str = "cn-hangzhou";

/// A resolved endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]/`, to which the query string is appended.
    pub base: String,
    /// The `host` header as sent and signed: `host[:port]` when the port is not the default.
    pub host_header: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("region must not be empty")]
    EmptyRegion,
    #[error("region '{0}' contains characters other than letters, digits and '-'")]
    BadRegion(String),
    #[error("endpoint '{0}' is not a valid URL: {1}")]
    BadUrl(String, String),
    #[error(
        "endpoint '{0}' uses plain http to a non-loopback host; use https (http is only for the simulator on 127.0.0.0/8 or localhost)"
    )]
    InsecureHttp(String),
    #[error("endpoint '{0}' has scheme '{1}'; only https (and http to loopback) are supported")]
    BadScheme(String, String),
    /// A user name or password in the URL: it would be kept wherever the endpoint is (the
    /// ledger's run history). The endpoint is shown without it.
    #[error(
        "endpoint '{0}' carries a user name or password; the gateway takes none (calls are signed with the AccessKey): remove it"
    )]
    UserInfo(String),
    #[error(
        "endpoint '{0}' has a path, a query or a fragment; give only scheme://host[:port] (calls go to /)"
    )]
    NotJustAHost(String),
}

impl Endpoint {
    pub fn for_region(region: &str) -> Result<Self, EndpointError> {
        if region.is_empty() {
            return Err(EndpointError::EmptyRegion);
        }
        if !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(EndpointError::BadRegion(region.to_owned()));
        }
        Self::parse(&format!("https://onsmqtt.{region}.aliyuncs.com"))
    }

    pub fn parse(raw_given: &str) -> Result<Self, EndpointError> {
        // Every message shows the endpoint without a user name or password in it.
        let shown = without_userinfo(raw_given);
        let raw = shown.as_str();
        if shown != raw_given {
            return Err(EndpointError::UserInfo(shown));
        }
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            // No scheme: https, the SDKs' default; but a loopback host is the simulator, which
            // speaks only http (`127.0.0.1:PORT`, as the SDKs are pointed at it).
            let authority = raw.split(['/', '?', '#']).next().unwrap_or(raw);
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => authority,
            };
            let scheme = if is_loopback(host) { "http" } else { "https" };
            format!("{scheme}://{raw}")
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| EndpointError::BadUrl(raw.to_owned(), e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| EndpointError::BadUrl(raw.to_owned(), "no host".into()))?
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::UserInfo(raw.to_owned()));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(EndpointError::NotJustAHost(raw.to_owned()));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => return Err(EndpointError::InsecureHttp(raw.to_owned())),
            other => return Err(EndpointError::BadScheme(raw.to_owned(), other.to_owned())),
        }
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        Ok(Endpoint {
            base: format!("{}://{host_header}/", url.scheme()),
            host_header,
        })
    }
}

impl Endpoint {
    /// Whether the calls stay on this machine (the simulator): such calls never go through a
    /// proxy, which would carry them, signed and in clear, off it.
    pub fn is_loopback(&self) -> bool {
        let host = match self.host_header.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => self
                .host_header
                .rsplit_once(':')
                .map_or(self.host_header.as_str(), |(host, _)| host),
        };
        is_loopback(host)
    }
}

/// `raw` with anything before an `@` in its authority replaced by `…`.
fn without_userinfo(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}…{}", &rest[at..]),
        None => raw.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_gives_the_regional_host() {
        let e = Endpoint::for_region("cn-hangzhou").unwrap();
        assert_eq!(e.base, "https://onsmqtt.cn-hangzhou.aliyuncs.com/");
        assert_eq!(e.host_header, "onsmqtt.cn-hangzhou.aliyuncs.com");
        assert_eq!(Endpoint::for_region(""), Err(EndpointError::EmptyRegion));
        assert!(Endpoint::for_region("cn/x").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (e.base.as_str(), e.host_header.as_str()),
            ("http://127.0.0.1:8080/", "127.0.0.1:8080")
        );
        assert!(Endpoint::parse("http://localhost:1").is_ok());
        assert!(Endpoint::parse("http://[::1]:1").unwrap().is_loopback());
        assert!(Endpoint::parse("127.0.0.1").unwrap().is_loopback());
        assert!(
            !Endpoint::parse("https://onsmqtt.example.com:443")
                .unwrap()
                .is_loopback()
        );
        assert!(matches!(
            Endpoint::parse("http://10.0.0.1:80"),
            Err(EndpointError::InsecureHttp(_))
        ));
        assert!(matches!(
            Endpoint::parse("ftp://x"),
            Err(EndpointError::BadScheme(..))
        ));
        assert_eq!(
            Endpoint::parse("onsmqtt.example.com").unwrap().base,
            "https://onsmqtt.example.com/"
        );
    }

    #[test]
    fn userinfo_paths_and_queries_are_refused_without_showing_a_password() {
        for raw in [
            "http://user:hunter2@127.0.0.1:8080",
            "https://user:hunter2@onsmqtt.example.com",
            "user:hunter2@127.0.0.1:1",
            "https://:hunter2@h",
        ] {
            let e = Endpoint::parse(raw).unwrap_err();
            assert!(matches!(e, EndpointError::UserInfo(_)), "{raw}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        for raw in [
            "https://onsmqtt.example.com/v1",
            "https://onsmqtt.example.com/?a=1",
            "https://onsmqtt.example.com#x",
            "127.0.0.1:8080/x",
        ] {
            assert!(
                matches!(Endpoint::parse(raw), Err(EndpointError::NotJustAHost(_))),
                "{raw}"
            );
        }
        assert!(Endpoint::parse("https://onsmqtt.example.com/").is_ok());
    }

    #[test]
    fn without_a_scheme_loopback_is_the_simulator_over_http() {
        for (raw, base) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080/"),
            ("localhost:9", "http://localhost:9/"),
            ("[::1]:7", "http://[::1]:7/"),
            (
                "onsmqtt.cn-shanghai.aliyuncs.com",
                "https://onsmqtt.cn-shanghai.aliyuncs.com/",
            ),
            ("10.0.0.1:8443", "https://10.0.0.1:8443/"),
        ] {
            assert_eq!(Endpoint::parse(raw).unwrap().base, base, "{raw}");
        }
    }
}
