//! `capacity.allow_endpoints` patterns: which delivery endpoints an app
//! server that joins by itself may report.

/// One `capacity.allow_endpoints` pattern: an `http://` or `https://` URL
/// (an endpoint matches only a pattern of its own scheme) whose host,
/// port and path may hold `*`, the only wildcard. The endpoint a server
/// reports is parsed as a URL (`reqwest::Url`, WHATWG rules) and each part
/// matched on its own with `globset`, so a `*` never crosses a separator:
/// in the host it matches within one label or IPv4 octet (dots are
/// separators: `http://10.1.*.*:8080` cannot match
/// `http://10.1.evil.example.com:8080`), as the port it matches any port,
/// in the path it matches within one segment. Endpoints with a user, a
/// query or a fragment never match. A pattern without a path allows any
/// path; without a port, the scheme's default (80 or 443).
#[derive(Debug, Clone)]
pub struct EndpointPattern {
    /// `http` or `https`.
    scheme: &'static str,
    /// Over the host with `.` written as `/` (globset's separator).
    host: globset::GlobMatcher,
    /// `None`: any port.
    port: Option<u16>,
    /// `None`: any path.
    path: Option<globset::GlobMatcher>,
}

/// A glob in which `*` matches 1+ characters and stops at `/` (written
/// `?*` for globset; `**` and other syntax are refused before this).
fn segment_glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(&pattern.replace('*', "?*"))
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.to_string())
}

impl EndpointPattern {
    /// Parses `pattern`. Errors (lower case, for the config check): not
    /// `http://` or `https://`, no host, a port other than digits or `*`, or glob syntax
    /// other than `*`.
    pub fn new(pattern: &str) -> Result<EndpointPattern, String> {
        const EXAMPLE: &str = "e.g. \"http://10.1.*.*:8080/records\"";
        let (scheme, rest) = if let Some(rest) = pattern.strip_prefix("http://") {
            ("http", rest)
        } else if let Some(rest) = pattern.strip_prefix("https://") {
            ("https", rest)
        } else {
            return Err(
                "it must start with \"http://\" or \"https://\" (endpoints are HTTP URLs)".into(),
            );
        };
        if let Some(c) = pattern.chars().find(|c| "?{}[]\\!@#".contains(*c)) {
            return Err(format!(
                "\"{c}\" is not allowed: \"*\" is the only wildcard, {EXAMPLE}"
            ));
        }
        if pattern.contains("**") {
            return Err(
                "\"**\" is not allowed: \"*\" matches one host label, the port or one path segment"
                    .into(),
            );
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(format!("it names no host, {EXAMPLE}"));
        }
        // `*` matches within one label, so `10.1.*` matches only hosts like
        // `10.1.x`: say how to write a network (`10.1.*.*`).
        let labels: Vec<&str> = host.split('.').collect();
        if host.contains('*')
            && host.bytes().any(|b| b.is_ascii_digit())
            && labels.len() != 4
            && labels
                .iter()
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit() || b == b'*'))
        {
            return Err(format!(
                "\"*\" matches one octet of an IPv4 address and {host:?} has {}, not 4; \
                 e.g. \"10.1.*.*\"",
                labels.len()
            ));
        }
        let port = match port {
            None => Some(if scheme == "https" { 443 } else { 80 }),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number 0..=65535 or \"*\""))?,
            ),
        };
        Ok(EndpointPattern {
            scheme,
            host: segment_glob(&host.to_ascii_lowercase().replace('.', "/"))?,
            port,
            path: path.map(segment_glob).transpose()?,
        })
    }

    /// Whether `endpoint` (as the server sent it) matches.
    pub fn matches(&self, endpoint: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(endpoint) else {
            return false;
        };
        let plain = url.scheme() == self.scheme
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none();
        let Some(host) = url.host_str().filter(|_| plain) else {
            return false;
        };
        self.host.is_match(host.replace('.', "/"))
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
            && self.path.as_ref().is_none_or(|g| g.is_match(url.path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_patterns_match_within_one_label_or_segment() {
        let p = |s: &str| EndpointPattern::new(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let ip = p("http://10.1.*.*:8080/records");
        assert!(ip.matches("http://10.1.2.3:8080/records"));
        assert!(ip.matches("http://10.1.200.17:8080/records"));
        for evil in [
            "http://10.1.evil.example.com:8080/records",
            "http://10.1.2.3.evil.example.com:8080/records",
            "http://10.1.2.3:8080@evil.example.com:8080/records",
            "http://10.1.2.3:8081/records",
            "http://10.1.2.3:8080/records/x",
            "http://10.1..:8080/records",
            "https://10.1.2.3:8080/records",
        ] {
            assert!(!ip.matches(evil), "{evil}");
        }
        let tls = p("https://10.1.*.*/records");
        assert!(tls.matches("https://10.1.2.3/records"));
        assert!(!tls.matches("http://10.1.2.3:443/records"));
        assert!(!tls.matches("https://10.1.2.3:8443/records"));
        let any_port = p("http://127.0.0.1:*");
        assert!(any_port.matches("http://127.0.0.1:7001/records"));
        assert!(any_port.matches("http://127.0.0.1:7001"));
        assert!(!any_port.matches("http://127.0.0.1:7001@evil.example.com/"));
        assert!(!any_port.matches("http://127.0.0.1:7001?x"));
        assert!(!any_port.matches("http://127.0.0.10:7001/"));
        let segment = p("http://blotter-*.internal:8080/v1/*/records");
        assert!(segment.matches("http://blotter-7.internal:8080/v1/eu/records"));
        assert!(!segment.matches("http://blotter-7.internal:8080/v1/eu/x/records"));
        assert!(!segment.matches("http://blotter-7.evil.internal:8080/v1/eu/records"));
        for (bad, why) in [
            (
                "ftp://10.1.*.*/",
                "must start with \"http://\" or \"https://\"",
            ),
            (
                "http://10.1.*:8080/records",
                "has 3, not 4; e.g. \"10.1.*.*\"",
            ),
            ("http://10.1.?.1/", "\"?\" is not allowed"),
            ("http://10.1.**/", "\"**\" is not allowed"),
            ("http://:8080/", "names no host"),
        ] {
            let e = EndpointPattern::new(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
