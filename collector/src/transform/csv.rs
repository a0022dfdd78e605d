//! One CSV line split into its values (RFC 4180 quoting: `"a, b"`, `""` for a quote).

/// None when a quoted value is not closed or text follows its closing quote.
pub fn split(line: &str, delimiter: u8) -> Option<Vec<String>> {
    let delimiter = delimiter as char;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut values = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
            match chars.next() {
                None => {
                    values.push(value);
                    return Some(values);
                }
                Some(c) if c == delimiter => values.push(value),
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        values.push(value);
                        return Some(values);
                    }
                    Some(c) if c == delimiter => break,
                    Some(c) => value.push(c),
                }
            }
            values.push(value);
        }
    }
}
