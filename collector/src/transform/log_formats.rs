//! log_to_json: known log line formats (field names as the Kinesis Agent gives them), or a
//! flow's own regex. Values stay strings, as read; a group that did not take part in the
//! match (an optional part absent from the line) leaves its field out.

use crate::line_regex::{self, Regex};
use serde_json::{Map, Value};

/// An Apache/NCSA quoted field: `"..."` with `\"` escapes.
const QUOTED: &str = r#""((?:[^"\\]|\\.)*)""#;
const COMMON_HEAD: &str = r"^(\S+) (\S+) (\S+) \[([^\]]+)\] ";
const COMMON_FIELDS: [&str; 7] = ["host", "ident", "authuser", "datetime", "request", "response", "bytes"];
/// `host tag[pid]: message`, the part of a syslog line after the timestamp. The colon is
/// optional: rsyslog writes RFC 5424 messages' APP-NAME[PROCID] without one.
const SYSLOG_TAIL: &str = r"(\S+) ([^\s\[:]+)(?:\[(\d+)\])?:? (.*)$";
const SYSLOG_FIELDS: [&str; 5] = ["timestamp", "hostname", "program", "processid", "message"];

/// The formats `format = "..."` names.
pub const FORMATS: [&str; 6] = ["common", "combined", "apache_error", "syslog", "rfc3339_syslog", "cri"];

#[derive(Clone, Debug)]
pub struct LogParser {
    regex: Regex,
    fields: Vec<String>,
}

impl LogParser {
    /// A built-in format (one of FORMATS), its fields renamed by `rename` if given.
    pub fn format(name: &str, rename: Option<Vec<String>>) -> Result<LogParser, String> {
        let (pattern, fields): (String, &[&str]) = match name {
            "common" => (format!(r"{COMMON_HEAD}{QUOTED} (\d{{3}}) (\S+)\s*$"), &COMMON_FIELDS),
            "combined" => (
                format!(r"{COMMON_HEAD}{QUOTED} (\d{{3}}) (\S+) {QUOTED} {QUOTED}\s*$"),
                &["host", "ident", "authuser", "datetime", "request", "response", "bytes", "referer", "agent"],
            ),
            // 2.4: `[time] [module:level] [pid N:tid M] [client ip:port] message`; 2.2 has
            // `[level]` and no pid.
            "apache_error" => (
                r"^\[([^\]]+)\] \[(?:([^:\]]+):)?([^\]]+)\](?: \[pid (\d+)(?::tid (\d+))?\])?(?: \[client ([^\]]+)\])? (.*)$"
                    .to_owned(),
                &["timestamp", "module", "severity", "processid", "threadid", "client", "message"],
            ),
            // RFC 3164 as syslog daemons write files: `Nov  8 02:36:38 host tag[pid]: msg`.
            "syslog" => (format!(r"^(?:<\d{{1,3}}>)?([A-Z][a-z]{{2}} [ \d]\d \d\d:\d\d:\d\d) {SYSLOG_TAIL}"), &SYSLOG_FIELDS),
            // rsyslog's RSYSLOG_FileFormat: an RFC 3339 timestamp.
            "rfc3339_syslog" => (
                format!(r"^(?:<\d{{1,3}}>)?(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) {SYSLOG_TAIL}"),
                &SYSLOG_FIELDS,
            ),
            // The container runtime's log lines under /var/log/pods: `time stream P|F message`.
            "cri" => (r"^(\S+) (stdout|stderr) ([FP]) (.*)$".to_owned(), &["time", "stream", "tag", "message"]),
            other => return Err(format!("`{other}`: expected one of {}", FORMATS.join(", "))),
        };
        let regex = line_regex::compile(&pattern).expect("the built-in patterns compile");
        let fields = match rename {
            Some(names) if names.len() != fields.len() => {
                return Err(format!(
                    "format `{name}` has {} fields ({}); `fields` names {}",
                    fields.len(),
                    fields.join(", "),
                    names.len()
                ));
            }
            Some(names) => names,
            None => fields.iter().map(|f| (*f).to_owned()).collect(),
        };
        Ok(LogParser { regex, fields })
    }

    /// A flow's own pattern: its groups named by `fields`, or by the pattern's own names.
    pub fn pattern(pattern: &str, fields: Option<Vec<String>>) -> Result<LogParser, String> {
        let regex = line_regex::compile(pattern).map_err(|e| format!("bad regex: {e}"))?;
        let groups = regex.captures_len() - 1;
        let fields = match fields {
            Some(names) if names.len() != groups => {
                return Err(format!("the pattern has {groups} groups; `fields` names {}", names.len()));
            }
            Some(names) => names,
            None => {
                let named: Vec<String> = regex.capture_names().skip(1).flatten().map(str::to_owned).collect();
                if groups == 0 || named.len() != groups {
                    return Err("name every group, as (?P<name>...), or list them in `fields`".into());
                }
                named
            }
        };
        Ok(LogParser { regex, fields })
    }

    /// The line's fields, each value its bytes as text (invalid UTF-8 replaced).
    pub fn parse(&self, line: &[u8]) -> Option<Map<String, Value>> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let caps = self.regex.captures(line)?;
        let text = |m: regex::bytes::Match<'_>| Value::String(String::from_utf8_lossy(m.as_bytes()).into_owned());
        Some(
            self.fields
                .iter()
                .enumerate()
                .filter_map(|(i, name)| caps.get(i + 1).map(|m| (name.clone(), text(m))))
                .collect(),
        )
    }
}
