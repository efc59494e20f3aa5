//! `Accept-Encoding` (RFC 9110 §12.5.3) read against the encodings a
//! policy offers: no allocation, one pass over each line per offered
//! encoding (there are at most three).

use super::Encoding;

/// A q-value in thousandths (`q=0.5` is 500), as RFC 9110 §12.4.2 writes
/// them: at most three decimals, never above 1.
type Quality = u16;

/// The encoding to answer with, given the client's `Accept-Encoding`
/// lines (`lines` makes an iterator over them, once per offered encoding)
/// and the encodings on offer in the policy's order of preference:
/// the acceptable one with the highest q-value, ties to the earlier in
/// `offered`. `None` means identity: no header at all (the client said
/// nothing, so nothing is assumed), an empty one, or nothing offered with
/// q above 0 (by name, or by `*` for the names not listed).
pub fn choose<'a, I: Iterator<Item = &'a [u8]>>(
    lines: impl Fn() -> I,
    offered: &[Encoding],
) -> Option<Encoding> {
    let mut best: Option<(Encoding, Quality)> = None;
    for &encoding in offered {
        let q = quality(lines(), encoding);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((encoding, q));
        }
    }
    best.map(|(e, _)| e)
}

/// Whether the lines accept `encoding` (q above 0, by name or by `*`),
/// whether or not it is on offer.
pub fn accepts<'a>(lines: impl Iterator<Item = &'a [u8]>, encoding: Encoding) -> bool {
    quality(lines, encoding) > 0
}

/// The q-value the lines give `encoding`: its own entry's (the highest,
/// if listed twice), else `*`'s, else 0.
fn quality<'a>(lines: impl Iterator<Item = &'a [u8]>, encoding: Encoding) -> Quality {
    let mut named: Option<Quality> = None;
    let mut star: Option<Quality> = None;
    for line in lines {
        for element in line.split(|b| *b == b',') {
            let Some((coding, q)) = parse_element(element) else {
                continue;
            };
            if encoding.is_named(coding) {
                named = Some(named.map_or(q, |n| n.max(q)));
            } else if coding == b"*" {
                star = Some(star.map_or(q, |s| s.max(q)));
            }
        }
    }
    named.or(star).unwrap_or(0)
}

/// One list element, `coding *( OWS ";" OWS parameter )`: the coding and
/// its q-value (1 when absent). `None` for an empty element or one whose
/// `q` is malformed (RFC 9110 gives it no meaning, so it accepts nothing).
fn parse_element(element: &[u8]) -> Option<(&[u8], Quality)> {
    let mut parts = element.split(|b| *b == b';');
    let coding = trim(parts.next()?);
    if coding.is_empty() {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let param = trim(param);
        let Some(eq) = param.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (trim(&param[..eq]), trim(&param[eq + 1..]));
        if name.eq_ignore_ascii_case(b"q") {
            q = parse_q(value)?;
        }
    }
    Some((coding, q))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn parse_q(value: &[u8]) -> Option<Quality> {
    let (whole, frac) = match value.iter().position(|b| *b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Quality = 0;
    for i in 0..3 {
        let digit = frac.get(i).map_or(0, |d| Quality::from(d - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `s` without leading and trailing spaces and tabs (OWS).
fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else {
        return &[];
    };
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::{Br, Gzip, Zstd};

    const ALL: [Encoding; 3] = [Zstd, Br, Gzip];

    fn pick(header: Option<&str>, offered: &[Encoding]) -> Option<Encoding> {
        let lines: Vec<&[u8]> = header.map(str::as_bytes).into_iter().collect();
        choose(|| lines.iter().copied(), offered)
    }

    #[test]
    fn the_negotiation_table() {
        let table: &[(Option<&str>, Option<Encoding>)] = &[
            (None, None),
            (Some(""), None),
            (Some("identity"), None),
            (Some("gzip"), Some(Gzip)),
            (Some("GZip"), Some(Gzip)),
            (Some("x-gzip"), Some(Gzip)),
            (Some("br"), Some(Br)),
            (Some("zstd"), Some(Zstd)),
            (Some("deflate"), None),
            (Some("gzip;q=0"), None),
            (Some("gzip; q=0.000"), None),
            (Some("gzip;q=0, br"), Some(Br)),
            (Some("*"), Some(Zstd)),
            (Some("*;q=0"), None),
            (Some("*;q=0, gzip"), Some(Gzip)),
            (Some("*, zstd;q=0"), Some(Br)),
            (Some("*;q=0.1, gzip;q=0.5"), Some(Gzip)),
            (Some("br;q=0.5, gzip;q=0.8"), Some(Gzip)),
            (Some("gzip, br"), Some(Br)),
            (Some("gzip, deflate, br, zstd"), Some(Zstd)),
            (Some("gzip;q=1.0, br;q=0.999"), Some(Gzip)),
            (Some("identity;q=0"), None),
            (Some("identity;q=0, gzip;q=0.1"), Some(Gzip)),
            (Some(" gzip ; q=0.5 ,, ,br;q=0.4"), Some(Gzip)),
            (Some("gzip;q=1.5"), None),
            (Some("gzip;q=0.5000"), None),
            (Some("gzip;q=abc, br"), Some(Br)),
            (Some("gzip;q="), None),
            (Some("gzip;level=9"), Some(Gzip)),
            (Some("gzip;q=0, gzip;q=0.5"), Some(Gzip)),
            (Some(";q=1"), None),
        ];
        for (header, want) in table {
            assert_eq!(pick(*header, &ALL), *want, "Accept-Encoding: {header:?}");
        }
    }

    #[test]
    fn ties_go_to_the_policy_order() {
        assert_eq!(pick(Some("gzip, br, zstd"), &[Gzip, Br, Zstd]), Some(Gzip));
        assert_eq!(pick(Some("gzip, br, zstd"), &[Br, Gzip]), Some(Br));
        assert_eq!(pick(Some("zstd"), &[Br, Gzip]), None);
        assert_eq!(pick(Some("*"), &[Gzip]), Some(Gzip));
    }

    #[test]
    fn several_lines_are_one_list() {
        let lines: [&[u8]; 2] = [b"gzip;q=0.2", b"br;q=0.9"];
        assert_eq!(choose(|| lines.iter().copied(), &ALL), Some(Br));
    }
}
