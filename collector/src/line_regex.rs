//! The regexes a flow applies to each line (`multiline_start`, `log_to_json`), matched on the
//! line's bytes as read: no UTF-8 check or copy per line. Classes are ASCII (`\d`, `\w`,
//! `\s`, as regex-lite had them), and `.` is any byte but a newline; a literal non-ASCII
//! character in a pattern matches its UTF-8 bytes.

pub use regex::bytes::Regex;

/// Compiles `pattern`, or says in one line why not.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    regex::bytes::RegexBuilder::new(pattern).unicode(false).build().map_err(|e| match e {
        // The parser's message is the pattern, a caret and the error on lines of their own:
        // a config error is one line, so only the last is kept.
        regex::Error::Syntax(text) => text.lines().last().unwrap_or_default().trim().to_owned(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_ascii_and_lines_are_bytes() {
        let digits = compile(r"^\d+ (\w+)").unwrap();
        assert!(digits.is_match(b"42 abc"));
        // Not Unicode digits (regex-lite's meaning of \d).
        assert!(!digits.is_match("٤٢ abc".as_bytes()));
        // A line that is not UTF-8 is matched as it is.
        let any = compile(r"^(.*) end$").unwrap();
        let caps = any.captures(b"\xff\xfe end").unwrap();
        assert_eq!(&caps[1], b"\xff\xfe");
        // A literal non-ASCII character matches its UTF-8 bytes.
        assert!(compile("é=(\\d)").unwrap().is_match("é=1".as_bytes()));
    }

    #[test]
    fn an_error_is_one_line() {
        let e = compile("(unclosed").unwrap_err();
        assert!(!e.contains('\n') && e.contains("unclosed group"), "{e}");
    }
}
