//! Path rewrites (`strip_prefix`, `replace_prefix`, `regex`), compiled once per
//! configuration and applied to the path before forwarding or serving files.

use std::borrow::Cow;

use regex::Regex;

use crate::config::model;

/// A compiled path rewrite.
#[derive(Clone, Debug)]
pub enum Rewrite {
    /// Remove a prefix at a segment boundary; an emptied path becomes `/`.
    StripPrefix(String),
    /// Replace a prefix (at a segment boundary) with another.
    ReplacePrefix {
        /// Prefix to remove.
        from: String,
        /// Prefix to put in its place.
        to: String,
    },
    /// Regex substitution on the whole path.
    Regex {
        /// Compiled pattern.
        pattern: Regex,
        /// Replacement with `$1`/`${name}` groups.
        replacement: String,
    },
}

impl Rewrite {
    /// Compiles the configured rewrite; errors are (field, message).
    pub fn build(def: &model::Rewrite) -> Result<Rewrite, (String, String)> {
        let given = [
            def.strip_prefix.is_some(),
            def.replace_prefix.is_some(),
            def.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err((
                String::new(),
                "a rewrite takes exactly one of strip_prefix, replace_prefix or regex".into(),
            ));
        }
        if let Some(p) = &def.strip_prefix {
            return Ok(Rewrite::StripPrefix(trim_slash(p)));
        }
        if let Some(r) = &def.replace_prefix {
            return Ok(Rewrite::ReplacePrefix {
                from: trim_slash(&r.from),
                to: r.to.clone(),
            });
        }
        match &def.regex {
            Some(r) => Regex::new(&r.pattern)
                .map(|pattern| Rewrite::Regex {
                    pattern,
                    replacement: r.replacement.clone(),
                })
                .map_err(|e| ("regex.pattern".into(), format!("invalid regex: {e}"))),
            None => Err((String::new(), "empty rewrite".into())),
        }
    }

    /// The rewritten path (borrowed when unchanged).
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match self {
            Rewrite::StripPrefix(prefix) => match strip_segment_prefix(path, prefix) {
                Some("") => Cow::Borrowed("/"),
                Some(rest) => Cow::Borrowed(rest),
                None => Cow::Borrowed(path),
            },
            Rewrite::ReplacePrefix { from, to } => match strip_segment_prefix(path, from) {
                Some(rest) => {
                    let to = to.strip_suffix('/').unwrap_or(to);
                    let mut out = String::with_capacity(to.len() + rest.len() + 1);
                    out.push_str(to);
                    out.push_str(rest);
                    if !out.starts_with('/') {
                        out.insert(0, '/');
                    }
                    Cow::Owned(out)
                }
                None => Cow::Borrowed(path),
            },
            Rewrite::Regex {
                pattern,
                replacement,
            } => pattern.replace(path, replacement.as_str()),
        }
    }
}

fn trim_slash(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        t.to_string()
    }
}

/// The rest of `path` after `prefix` when the prefix ends at a segment boundary.
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(p: &str) -> Rewrite {
        Rewrite::StripPrefix(trim_slash(p))
    }

    #[test]
    fn strip_prefix_is_segment_aware() {
        let r = strip("/v1");
        assert_eq!(r.apply("/v1/users"), "/users");
        assert_eq!(r.apply("/v1"), "/");
        assert_eq!(r.apply("/v1x/users"), "/v1x/users");
    }

    #[test]
    fn replace_prefix_swaps_segments() {
        let r = Rewrite::ReplacePrefix {
            from: "/old".into(),
            to: "/new/".into(),
        };
        assert_eq!(r.apply("/old/a"), "/new/a");
        assert_eq!(r.apply("/old"), "/new");
        assert_eq!(r.apply("/older"), "/older");
    }

    #[test]
    fn regex_rewrite_uses_groups() {
        let def = model::Rewrite {
            strip_prefix: None,
            replace_prefix: None,
            regex: Some(model::RegexRewrite {
                pattern: "^/users/([0-9]+)$".into(),
                replacement: "/u?id=$1".into(),
            }),
        };
        let r = Rewrite::build(&def).unwrap();
        assert_eq!(r.apply("/users/42"), "/u?id=42");
    }

    #[test]
    fn two_rewrites_at_once_is_an_error() {
        let def = model::Rewrite {
            strip_prefix: Some("/a".into()),
            replace_prefix: Some(model::ReplacePrefix {
                from: "/a".into(),
                to: "/b".into(),
            }),
            regex: None,
        };
        assert!(Rewrite::build(&def).is_err());
    }
}
