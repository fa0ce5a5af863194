//! Secrets out of text: the one place where a URL that may carry
//! credentials is made fit for a log line, an error message, a dead-letter
//! header or an admin API answer.
//!
//! A target URL may hold a password (`http://user:pass@host/…`, which the
//! HTTP client sends as basic auth) or a token in its query
//! (`…?api_key=…`). [`url`] keeps the scheme, user, host, port, path and
//! query *names*, and replaces the password and every query *value* with
//! `redacted`. [`text`] does the same to every URL inside a longer text,
//! for messages written by libraries (an HTTP client's error chain).

use std::borrow::Cow;

/// What a secret is replaced with.
pub const REDACTED: &str = "redacted";

/// Whether a `[kafka.options]` key holds a secret (a password, secret,
/// token, key or JAAS / OAUTHBEARER config, e.g. `sasl.password`,
/// `ssl.key.password`, `sasl.jaas.config`): its value is never shown.
pub fn is_secret_option(key: &str) -> bool {
    [
        "password",
        "secret",
        "token",
        "key",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `raw` with its password and query values replaced by [`REDACTED`];
/// `raw` unchanged when it has neither. A string that does not parse as a
/// URL but looks like `scheme://user:pass@…` loses everything between `:`
/// and `@` of its authority.
pub fn url(raw: &str) -> Cow<'_, str> {
    match reqwest::Url::parse(raw) {
        Ok(mut u) => {
            let mut changed = false;
            if u.password().is_some() && u.set_password(Some(REDACTED)).is_ok() {
                changed = true;
            }
            if u.query().is_some_and(|q| !q.is_empty()) {
                let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
                let mut q = u.query_pairs_mut();
                q.clear();
                for k in &names {
                    q.append_pair(k, REDACTED);
                }
                drop(q);
                changed = true;
            }
            if changed {
                Cow::Owned(u.into())
            } else {
                Cow::Borrowed(raw)
            }
        }
        Err(_) => unparsed(raw),
    }
}

/// The fallback of [`url`] for text that is not a valid URL.
fn unparsed(raw: &str) -> Cow<'_, str> {
    let Some(start) = raw.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(raw);
    };
    let rest = &raw[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Cow::Borrowed(raw);
    };
    match rest[..at].find(':') {
        Some(colon) => Cow::Owned(format!(
            "{}{}:{REDACTED}{}",
            &raw[..start],
            &rest[..colon],
            &rest[at..]
        )),
        None => Cow::Borrowed(raw),
    }
}

/// `text` with every URL in it (a run of non-space characters containing
/// `://`, trimmed of surrounding quotes and brackets) passed through [`url`].
pub fn text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let trim: &[char] = &['(', ')', '"', '\'', '<', '>', '[', ']', ',', ';', ':', '.'];
        let core = word.trim_matches(trim);
        if core.contains("://") {
            let lead = word.len() - word.trim_start_matches(trim).len();
            let clean = url(core);
            if clean != core {
                changed = true;
                out.push_str(&word[..lead]);
                out.push_str(&clean);
                out.push_str(&word[lead + core.len()..]);
                continue;
            }
        }
        out.push_str(word);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// The message of `e` and of every error it wraps, joined by `: `, with
/// URLs redacted (an HTTP client's error names the request URL).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    text(&s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_query_values_are_replaced() {
        assert_eq!(
            url("http://svc:s3cret@10.0.0.5:8080/records?api_key=k3y&x=1"),
            "http://svc:redacted@10.0.0.5:8080/records?api_key=redacted&x=redacted"
        );
        assert_eq!(
            url("http://10.0.0.5:8080/records"),
            "http://10.0.0.5:8080/records"
        );
        assert_eq!(url("http://token@10.0.0.6/"), "http://token@10.0.0.6/");
        assert_eq!(url("kafka://out"), "kafka://out");
        // Not a URL the parser takes (bad port), credentials still go.
        assert_eq!(
            url("http://svc:s3cret@host:99999/x"),
            "http://svc:redacted@host:99999/x"
        );
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let t = "error sending request for url (http://svc:s3cret@127.0.0.1:1/records): \
                 connection refused; see \"http://a:b@h/\"";
        let clean = text(t);
        assert!(
            !clean.contains("s3cret") && !clean.contains(":b@"),
            "{clean}"
        );
        assert!(
            clean.contains("(http://svc:redacted@127.0.0.1:1/records):"),
            "{clean}"
        );
        assert!(clean.contains("\"http://a:redacted@h/\""), "{clean}");
        assert_eq!(text("no url here"), "no url here");
    }
}
