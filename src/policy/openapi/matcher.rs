//! OpenAPI path templates (`/orders/{id}`, `/files/{name}.{ext}`) compiled
//! into a trie of segments, so a request finds its path item with one walk
//! down its path instead of one regex per documented path.
//!
//! A literal segment wins over a templated one at the same depth (the
//! specification's rule: `/orders/mine` before `/orders/{id}`); among
//! templated segments, the one with more literal text wins. When a branch
//! fails deeper down, the walk backs up and tries the next one.

use std::collections::HashMap;

/// A piece of one templated segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// One templated segment: literal text and parameters, in order.
#[derive(Debug)]
struct Pattern {
    parts: Vec<Part>,
    /// Literal characters in the pattern (more wins).
    literal_len: usize,
    next: Node,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    patterns: Vec<Pattern>,
    /// The path item that ends here.
    item: Option<usize>,
}

/// Every documented path, ready to match request paths against.
#[derive(Debug, Default)]
pub struct Matcher {
    root: Node,
}

/// Why a template was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// It does not start with `/`.
    #[error("a path must start with `/`")]
    NoSlash,
    /// A `{` without its `}`, or a `{}`.
    #[error("`{0}` has an unclosed or empty `{{…}}`")]
    Unbalanced(String),
    /// Two parameters with nothing between them cannot be told apart.
    #[error("`{0}` has two parameters with no text between them")]
    Adjacent(String),
    /// The same template twice (after naming parameters alike).
    #[error("`{0}` is the same path as another one")]
    Duplicate(String),
}

/// A matched request path: the path item and the path parameters' raw
/// (still percent-encoded) values.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'p> {
    /// Index of the path item given to [`Matcher::insert`].
    pub item: usize,
    /// `(name, raw value)` for every templated parameter.
    pub params: Vec<(&'p str, &'p str)>,
}

fn parse_segment(segment: &str, template: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let close = rest
                    .find('}')
                    .filter(|&c| c > 1)
                    .ok_or_else(|| TemplateError::Unbalanced(template.to_string()))?;
                if matches!(parts.last(), Some(Part::Param(_))) {
                    return Err(TemplateError::Adjacent(template.to_string()));
                }
                parts.push(Part::Param(rest[1..close].to_string()));
                rest = &rest[close + 1..];
            }
            Some(open) => {
                parts.push(Part::Literal(rest[..open].to_string()));
                rest = &rest[open..];
            }
            None => {
                if rest.contains('}') {
                    return Err(TemplateError::Unbalanced(template.to_string()));
                }
                parts.push(Part::Literal(rest.to_string()));
                rest = "";
            }
        }
    }
    Ok(parts)
}

/// The parameters' values when `segment` fits `parts`, else None. A
/// parameter takes at least one character and stops at the first
/// occurrence of the literal after it.
fn fit<'s>(parts: &[Part], segment: &'s str, out: &mut Vec<&'s str>) -> bool {
    let mut rest = segment;
    let mut i = 0;
    while i < parts.len() {
        match &parts[i] {
            Part::Literal(l) => match rest.strip_prefix(l.as_str()) {
                Some(r) => rest = r,
                None => return false,
            },
            Part::Param(_) => {
                let value = match parts.get(i + 1) {
                    Some(Part::Literal(next)) => {
                        // At least one character, whatever its length in bytes.
                        let first = rest.chars().next().map_or(0, char::len_utf8);
                        match rest[first..].find(next.as_str()) {
                            Some(at) => &rest[..first + at],
                            None => return false,
                        }
                    }
                    _ => rest,
                };
                if value.is_empty() {
                    return false;
                }
                out.push(value);
                rest = &rest[value.len()..];
            }
        }
        i += 1;
    }
    rest.is_empty()
}

impl Matcher {
    /// Adds a template (`/orders/{id}`) for path item `item`.
    pub fn insert(&mut self, template: &str, item: usize) -> Result<(), TemplateError> {
        let rest = template.strip_prefix('/').ok_or(TemplateError::NoSlash)?;
        let mut node = &mut self.root;
        for segment in rest.split('/') {
            if !segment.contains(['{', '}']) {
                node = node.literal.entry(segment.to_string()).or_default();
                continue;
            }
            let parts = parse_segment(segment, template)?;
            // Parameters named differently still make the same shape.
            let shape = |ps: &[Part]| -> Vec<Option<String>> {
                ps.iter()
                    .map(|p| match p {
                        Part::Literal(l) => Some(l.clone()),
                        Part::Param(_) => None,
                    })
                    .collect()
            };
            let target = shape(&parts);
            let at = match node.patterns.iter().position(|p| shape(&p.parts) == target) {
                Some(at) => at,
                None => {
                    let literal_len = parts
                        .iter()
                        .map(|p| match p {
                            Part::Literal(l) => l.len(),
                            Part::Param(_) => 0,
                        })
                        .sum();
                    node.patterns.push(Pattern {
                        parts,
                        literal_len,
                        next: Node::default(),
                    });
                    node.patterns.len() - 1
                }
            };
            node = &mut node.patterns[at].next;
        }
        if node.item.is_some() {
            return Err(TemplateError::Duplicate(template.to_string()));
        }
        node.item = Some(item);
        sort(&mut self.root);
        Ok(())
    }

    /// The path item `path` (without its query) belongs to, with its
    /// parameters' values.
    pub fn find<'s>(&'s self, path: &'s str) -> Option<Found<'s>> {
        let rest = path.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        let mut params = Vec::new();
        let item = walk(&self.root, &segments, &mut params)?;
        Some(Found { item, params })
    }
}

/// Orders each node's templated segments, most literal text first (a
/// stable sort: equal ones keep the document's order).
fn sort(node: &mut Node) {
    node.patterns
        .sort_by_key(|p| std::cmp::Reverse(p.literal_len));
    for p in &mut node.patterns {
        sort(&mut p.next);
    }
    for n in node.literal.values_mut() {
        sort(n);
    }
}

fn walk<'s>(
    node: &'s Node,
    segments: &[&'s str],
    params: &mut Vec<(&'s str, &'s str)>,
) -> Option<usize> {
    let Some((first, rest)) = segments.split_first() else {
        return node.item;
    };
    if let Some(next) = node.literal.get(*first)
        && let Some(item) = walk(next, rest, params)
    {
        return Some(item);
    }
    let mut values = Vec::new();
    for pattern in &node.patterns {
        values.clear();
        if !fit(&pattern.parts, first, &mut values) {
            continue;
        }
        let kept = params.len();
        let names = pattern.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        });
        params.extend(names.zip(values.iter().copied()));
        if let Some(item) = walk(&pattern.next, rest, params) {
            return Some(item);
        }
        params.truncate(kept);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(templates: &[&str]) -> Matcher {
        let mut m = Matcher::default();
        for (i, t) in templates.iter().enumerate() {
            m.insert(t, i).unwrap();
        }
        m
    }

    #[test]
    fn literal_segments_win_over_templated_ones() {
        let m = matcher(&["/orders/{id}", "/orders/mine", "/orders"]);
        assert_eq!(
            m.find("/orders/42"),
            Some(Found {
                item: 0,
                params: vec![("id", "42")]
            })
        );
        assert_eq!(m.find("/orders/mine").map(|f| f.item), Some(1));
        assert_eq!(m.find("/orders").map(|f| f.item), Some(2));
        assert_eq!(m.find("/orders/"), None);
        assert_eq!(m.find("/orders/1/items"), None);
        assert_eq!(m.find("/other"), None);
    }

    #[test]
    fn a_failed_literal_branch_falls_back_to_the_template() {
        let m = matcher(&["/orders/mine/settings", "/orders/{id}/items"]);
        assert_eq!(
            m.find("/orders/mine/items"),
            Some(Found {
                item: 1,
                params: vec![("id", "mine")]
            })
        );
    }

    #[test]
    fn segments_may_mix_text_and_parameters() {
        let m = matcher(&["/files/{name}.{ext}", "/files/{name}", "/v{major}/x"]);
        assert_eq!(
            m.find("/files/report.tar.gz").map(|f| f.params),
            Some(vec![("name", "report"), ("ext", "tar.gz")])
        );
        assert_eq!(m.find("/files/report").map(|f| f.item), Some(1));
        assert_eq!(
            m.find("/v2/x").map(|f| f.params),
            Some(vec![("major", "2")])
        );
        assert_eq!(m.find("/v/x"), None, "a parameter is never empty");
        assert_eq!(
            m.find("/files/é.txt").map(|f| f.params),
            Some(vec![("name", "é"), ("ext", "txt")])
        );
    }

    /// The template with the values put back in place of its parameters.
    fn rebuilt(template: &str, params: &[(&str, &str)]) -> String {
        let mut out = String::new();
        let mut values = params.iter();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = open + rest[open..].find('}').unwrap();
            let (name, value) = values.next().unwrap();
            assert_eq!(*name, &rest[open + 1..close]);
            assert!(!value.is_empty());
            out.push_str(value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn every_match_puts_the_path_back_together() {
        let templates = [
            "/orders",
            "/orders/{id}",
            "/orders/mine",
            "/orders/{id}/items/{item}",
            "/files/{name}.{ext}",
            "/files/{name}",
            "/v{major}.{minor}/x",
            "/a/{b}-{c}/d",
        ];
        let m = matcher(&templates);
        let pieces = [
            "orders", "mine", "42", "items", "files", "a.b", "v1.2", "x", "a", "b-c", "d", "", "é.",
        ];
        let mut found = 0;
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let mut longer = Vec::new();
            for p in &paths {
                for piece in pieces {
                    let path = format!("{p}/{piece}");
                    if let Some(f) = m.find(&path) {
                        found += 1;
                        assert_eq!(rebuilt(templates[f.item], &f.params), path);
                    }
                    longer.push(path);
                }
            }
            paths = longer;
        }
        assert!(found > 100, "{found}");
    }

    #[test]
    fn bad_templates_are_refused() {
        let mut m = Matcher::default();
        assert_eq!(m.insert("orders", 0), Err(TemplateError::NoSlash));
        assert!(matches!(
            m.insert("/a/{id", 0),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            m.insert("/a/{}", 0),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            m.insert("/a/{x}{y}", 0),
            Err(TemplateError::Adjacent(_))
        ));
        m.insert("/a/{id}", 0).unwrap();
        assert!(matches!(
            m.insert("/a/{key}", 1),
            Err(TemplateError::Duplicate(_))
        ));
    }
}
