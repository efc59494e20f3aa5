//! Host canonicalisation, shared by the table builder and the request side so that a
//! configured host and a request's Host header always reduce to the same key.

/// A configured host after canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum HostPattern {
    /// Matches this host only.
    Exact(String),
    /// Matches any host ending with this suffix (".example.org"); "" is the bare `*`.
    Wildcard(String),
}

impl HostPattern {
    /// Reads a configured host; the error is a reason for the user.
    pub(super) fn parse(raw: &str) -> Result<HostPattern, &'static str> {
        let host = canonical(raw).to_ascii_lowercase();
        if host.is_empty() {
            return Err("host is empty");
        }
        if host == "*" {
            return Ok(HostPattern::Wildcard(String::new()));
        }
        match host.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                Ok(HostPattern::Wildcard(suffix.to_owned()))
            }
            Some(_) => Err("a wildcard must be a whole leading label, as in \"*.example.org\""),
            None if host.contains('*') => {
                Err("a wildcard must be a whole leading label, as in \"*.example.org\"")
            }
            None => Ok(HostPattern::Exact(host)),
        }
    }
}

/// Drops the port, the IPv6 brackets and a trailing dot, without allocating.
///
/// Brackets go too so that `[::1]:8080`, `[::1]` and a bare `::1` share one key.
pub(super) fn canonical(raw: &str) -> &str {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        match raw.split_once(':') {
            // More than one colon without brackets is a bare IPv6 literal, not a port.
            Some((name, port)) if !port.contains(':') => name,
            _ => raw,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Longest hosts seen in practice fit here; DNS caps names at 253 bytes.
const STACK_HOST: usize = 256;

/// Calls `f` with `host` in ASCII lower case, copying only when it has upper-case letters
/// and then onto the stack, so the request path stays allocation-free.
pub(super) fn with_lowercase<R>(host: &str, f: impl FnOnce(&str) -> R) -> R {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(host);
    }
    let mut buf = [0u8; STACK_HOST];
    if let Some(dst) = buf.get_mut(..host.len()) {
        dst.copy_from_slice(host.as_bytes());
        // Lower-casing ASCII bytes keeps UTF-8 valid, so this cannot fail; the fallback
        // keeps the function total all the same.
        if let Ok(lower) = std::str::from_utf8_mut(dst) {
            lower.make_ascii_lowercase();
            return f(lower);
        }
    }
    f(&host.to_ascii_lowercase())
}

/// The suffixes of a canonical host that a wildcard can match, longest first: each
/// suffix starting at a dot after a non-empty first label, then "" for the bare `*`.
pub(super) fn wildcard_suffixes(host: &str) -> impl Iterator<Item = &str> {
    let dots = host
        .bytes()
        .enumerate()
        .skip(1)
        .filter(|&(_, b)| b == b'.')
        .map(|(i, _)| &host[i..]);
    let any = (!host.is_empty()).then_some("");
    dots.chain(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_ignored_in_host() {
        assert_eq!(canonical("api.example.com:8443"), "api.example.com");
        assert_eq!(canonical("api.example.com"), "api.example.com");
    }

    #[test]
    fn ipv6_literal_keeps_its_colons() {
        assert_eq!(canonical("[::1]:8080"), "::1");
        assert_eq!(canonical("[::1]"), "::1");
        assert_eq!(canonical("::1"), "::1");
    }

    #[test]
    fn trailing_dot_is_ignored_in_host() {
        assert_eq!(canonical("example.org."), "example.org");
        assert_eq!(canonical("example.org.:80"), "example.org");
    }

    #[test]
    fn lowercase_copies_only_when_needed() {
        assert_eq!(
            with_lowercase("API.Example.COM", str::to_owned),
            "api.example.com"
        );
        assert_eq!(
            with_lowercase("api.example.com", str::to_owned),
            "api.example.com"
        );
        let long = "A".repeat(STACK_HOST + 10);
        assert_eq!(
            with_lowercase(&long, str::to_owned),
            "a".repeat(STACK_HOST + 10)
        );
    }

    #[test]
    fn wildcard_suffixes_are_longest_first() {
        let got: Vec<&str> = wildcard_suffixes("a.b.example.org").collect();
        assert_eq!(got, [".b.example.org", ".example.org", ".org", ""]);
        let got: Vec<&str> = wildcard_suffixes(".org").collect();
        assert_eq!(got, [""]);
        assert_eq!(wildcard_suffixes("").count(), 0);
    }

    #[test]
    fn host_patterns_are_validated() {
        assert_eq!(
            HostPattern::parse("API.example.com:80"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.Example.org."),
            Ok(HostPattern::Wildcard(".example.org".into()))
        );
        assert_eq!(
            HostPattern::parse("*"),
            Ok(HostPattern::Wildcard(String::new()))
        );
        assert!(HostPattern::parse("").is_err());
        assert_eq!(HostPattern::parse("*."), HostPattern::parse("*"));
        assert!(HostPattern::parse("*..").is_err());
        assert!(HostPattern::parse("*example.org").is_err());
        assert!(HostPattern::parse("a.*.org").is_err());
    }
}
