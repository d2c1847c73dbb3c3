//! `/etc/os-release` read as data (os-release(5)): `KEY=value` lines, the
//! value optionally single- or double-quoted with backslash escapes in
//! double quotes. Nothing is ever evaluated: a `$(...)` in the guest's file
//! stays text. Control characters in values are dropped, so a value can
//! never become two facts.

/// The assignments of an os-release file, in order; malformed lines are
/// skipped.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(line).collect()
}

/// The value of `key` in parsed assignments (the last one wins, as in a
/// shell).
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, raw) = line.split_once('=')?;
    let key_ok = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if !key_ok {
        return None;
    }
    Some((key.to_string(), unquote(raw)?))
}

fn unquote(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    match raw.chars().next() {
        Some(q @ ('"' | '\'')) => {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    c if c == q => {
                        closed = true;
                        break;
                    }
                    '\\' if q == '"' => match chars.next() {
                        Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                        Some(e) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => return None,
                    },
                    c => out.push(c),
                }
            }
            // Text after the closing quote is not part of os-release(5).
            if !closed || chars.next().is_some() {
                return None;
            }
        }
        _ => out.push_str(raw),
    }
    out.retain(|c| !c.is_control());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_file_parses() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                    VERSION_ID=\"12\"\nID=debian\nHOME_URL='https://www.debian.org/'\n";
        let p = parse(text);
        assert_eq!(get(&p, "ID"), Some("debian"));
        assert_eq!(get(&p, "VERSION_ID"), Some("12"));
        assert_eq!(
            get(&p, "PRETTY_NAME"),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(get(&p, "HOME_URL"), Some("https://www.debian.org/"));
    }

    #[test]
    fn nothing_is_evaluated_or_split() {
        let text = "ID=\"$(touch /tmp/pwned)\"\nNAME=\"a\\\"b\\\\c\"\nVERSION_ID=\"1\u{7}2\"\n";
        let p = parse(text);
        assert_eq!(get(&p, "ID"), Some("$(touch /tmp/pwned)"));
        assert_eq!(get(&p, "NAME"), Some("a\"b\\c"));
        assert_eq!(get(&p, "VERSION_ID"), Some("12"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "# comment\n=x\n1A=b\nA B=c\nUNCLOSED=\"x\nTRAIL=\"x\"y\nOK=1\n";
        assert_eq!(parse(text), vec![("OK".to_string(), "1".to_string())]);
    }
}
