//! Configuration: the TOML model (raw.rs) validated once into typed values. Every error
//! names the file, the line and the key, and nothing is attached before the config is good.

pub mod kinesis_agent;
mod raw;
mod sinks;
mod sources;

use std::{
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use crate::transform::{Pipeline, Step, log_formats::LogParser};

pub const DEFAULT_PATH: &str = "/etc/collector/collector.toml";
/// The kernel's tables of watched files hold this many by default (~12 MiB of kernel memory).
pub const DEFAULT_MAX_FILES: u32 = 65_536;
const MAX_FILES: std::ops::RangeInclusive<i64> = 1_024..=1_048_576;

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub host: String,
    /// Files held at once, at most: sizes the kernel's tables of watched files.
    pub max_files: u32,
    pub flows: Vec<Flow>,
    /// Where /metrics, /health and /status are served; None: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Counters sent to CloudWatch with PutMetricData; None: not sent.
    pub cloudwatch: Option<CloudWatchConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "kinesis"), allow(dead_code))]
pub struct CloudWatchConfig {
    pub namespace: String,
    pub interval: Duration,
    pub access: AwsAccess,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    Start,
    End,
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub name: String,
    pub paths: Vec<String>,
    pub exclude: Vec<glob::Pattern>,
    /// Where to start in files that have no checkpoint and existed before start-up (files
    /// created while running are always read from the start).
    pub initial_position: InitialPosition,
    pub multiline_start: Option<crate::line_regex::Regex>,
    pub multiline_flush: Duration,
    pub skip_header_lines: u32,
    pub max_record_bytes: usize,
    pub truncated_terminator: Vec<u8>,
    pub rotated_idle: Duration,
    /// New bytes wait on disk up to this long for more to join them in one batch (one sink
    /// call), unless a full batch is already there.
    pub max_batch_age: Duration,
    /// How often held files are checked for bytes no write event announced (writes the
    /// kernel hooks do not see: io_uring, mmap); zero: never.
    pub sweep_interval: Duration,
    /// Applied in order to each record before the sink.
    pub transforms: Pipeline,
    pub sink: SinkConfig,
}

#[derive(Clone, Debug)]
pub enum SinkConfig {
    File {
        path: PathBuf,
        format: FileFormat,
    },
    /// Accepts and discards (benchmarks, trying a config).
    Null,
    // Read by the AWS sinks, which the guests' static build leaves out.
    #[cfg_attr(not(feature = "kinesis"), allow(dead_code))]
    Kinesis(KinesisConfig),
    #[cfg_attr(not(feature = "kinesis"), allow(dead_code))]
    Firehose(FirehoseConfig),
}

/// Short enough for latency well under the 50 ms the project aims at; long enough that a
/// file written 1,000 times a second costs 50 sink calls a second, not 1,000.
pub const DEFAULT_MAX_BATCH_AGE: Duration = Duration::from_millis(20);

/// How long a rotated or unlinked log, read to its end, is held after its last write: an
/// app that has not reopened its log yet still writes to the old one for a while.
pub const DEFAULT_ROTATED_IDLE: Duration = Duration::from_secs(300);

impl SinkConfig {
    /// The `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File { .. } => "file",
            SinkConfig::Null => "null",
            SinkConfig::Kinesis(_) => "kinesis",
            SinkConfig::Firehose(_) => "firehose",
        }
    }
}

/// Largest record Kinesis Data Streams takes, partition key included.
pub const KINESIS_RECORD_LIMIT: usize = 1024 * 1024;
/// Room kept for the partition key (at most 256 characters).
pub const KINESIS_KEY_ROOM: usize = 256;

/// Largest record Firehose takes (1,000 KiB).
pub const FIREHOSE_RECORD_LIMIT: usize = 1000 * 1024;

/// Where and as whom an AWS sink connects; unset values come from aws-config's default
/// chain (environment, profile, web identity / IRSA, ECS, IMDSv2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsAccess {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    /// How long one request may take before it is given up and sent again (None: the
    /// default). A request given up may still have been stored: its records can arrive twice.
    pub request_timeout: Option<Duration>,
}

/// Long enough for a 5 MiB request over a slow link; a hung connection is found this soon.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUTS: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisConfig {
    pub stream: String,
    pub access: AwsAccess,
    pub partition_key: PartitionKey,
    /// Wrap each record in JSON with where it came from (host, flow, path, dev, ino, offset).
    pub envelope: bool,
    /// PutRecords calls out at once (a file's records are in one at a time).
    pub requests_in_flight: usize,
    /// Pack a file's consecutive whole records into KPL aggregated records of at most this
    /// many bytes (partition key included); None: one Kinesis record per record.
    pub aggregate: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirehoseConfig {
    pub delivery_stream: String,
    pub access: AwsAccess,
    /// Each record as a JSON envelope (see KinesisConfig::envelope).
    pub envelope: bool,
    /// Pack consecutive whole records into one Firehose record of up to 1,000 KiB (Firehose
    /// bills per record in 5 KB steps); each record keeps its newline.
    pub aggregate: bool,
    /// PutRecordBatch calls out at once (see KinesisConfig).
    pub requests_in_flight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKey {
    /// One key per file (dev, ino): a file's records stay on one shard, in order.
    File,
    /// A hash of the record: spreads evenly, the same record always lands on the same shard.
    Deterministic,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Raw,
    Json,
}

/// A config error, located: `file:line: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
    /// The config could not be fetched (SSM unreachable, throttled, no credentials yet): a
    /// later try may work, unlike a config that is wrong.
    pub temporary: bool,
}

impl Config {
    /// A config from `source`: a TOML file (and the `*.toml` files of a `<stem>.d` directory
    /// beside it, if there is one), a directory of `*.toml` files, a Kinesis Agent
    /// `agent.json`, or `ssm:/parameter/name` (SSM Parameter Store). Files are merged in
    /// name order: flows add up; `[collector]` and `[metrics]` may be set in one file only.
    pub fn load(source: &Path) -> Result<Config, ConfigError> {
        Config::merge(&sources::read(source)?)
    }

    /// One config text.
    #[cfg(test)]
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        Config::merge(&[(file.to_owned(), text.to_owned())])
    }

    /// Texts merged in order, each error located in its own text.
    pub fn merge(texts: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut merged = Merged::default();
        for (file, text) in texts {
            merged.add(file, text)?;
        }
        let Merged { collector, metrics, flows, .. } = merged;
        if flows.is_empty() {
            let files: Vec<&str> = texts.iter().map(|(f, _)| f.as_str()).collect();
            return Err(ConfigError {
                file: files.join(", "),
                line: 1,
                key: "flow".into(),
                message: "no [[flow]] defined: nothing to ship".into(),
                temporary: false,
            });
        }
        let (state_dir, host, max_files) = collector.map(|c| (c.state_dir, c.host, c.max_files)).unwrap_or_default();
        Ok(Config {
            state_dir: state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/collector")),
            host: host.unwrap_or_else(hostname),
            max_files: max_files.unwrap_or(DEFAULT_MAX_FILES),
            flows,
            metrics_listen: metrics.as_ref().and_then(|(_, listen, _)| *listen),
            cloudwatch: metrics.and_then(|(_, _, cloudwatch)| cloudwatch),
        })
    }
}

/// `[collector]`, and the file that set it.
struct CollectorSection {
    file: String,
    state_dir: Option<PathBuf>,
    host: Option<String>,
    max_files: Option<u32>,
}

/// Sections gathered from the texts so far, with the file that set each.
#[derive(Default)]
struct Merged {
    collector: Option<CollectorSection>,
    metrics: Option<(String, Option<std::net::SocketAddr>, Option<CloudWatchConfig>)>,
    flows: Vec<Flow>,
    /// Where each flow name was defined: `file:line`.
    flow_at: Vec<String>,
}

impl Merged {
    fn add(&mut self, file: &str, text: &str) -> Result<(), ConfigError> {
        let at = |span: Range<usize>, key: &str, message: String| ConfigError {
            file: file.into(),
            line: line_of(text, span.start),
            key: key.into(),
            message,
            temporary: false,
        };
        let expanded = expand_env(text, &|name| std::env::var(name).ok()).map_err(|(offset, message)| ConfigError {
            file: file.into(),
            line: line_of(text, offset),
            key: "-".into(),
            message,
            temporary: false,
        })?;
        let text = expanded.as_str();
        let raw: raw::File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, &key_near(text, e.span()), e.message().trim().to_owned())
        })?;
        if let Some(collector) = &raw.collector {
            if let Some(CollectorSection { file: other, .. }) = &self.collector {
                return Err(at(collector.span(), "collector", format!("already set in {other}: set it in one file")));
            }
            let state_dir = match &collector.get_ref().state_dir {
                Some(dir) if !dir.get_ref().starts_with('/') => {
                    return Err(at(dir.span(), "collector.state_dir", "must be an absolute path".into()));
                }
                Some(dir) => Some(PathBuf::from(dir.get_ref())),
                None => None,
            };
            let max_files = match &collector.get_ref().max_files {
                Some(n) if !MAX_FILES.contains(n.get_ref()) => {
                    return Err(at(
                        n.span(),
                        "collector.max_files",
                        format!("must be from {} to {} (files held at once)", MAX_FILES.start(), MAX_FILES.end()),
                    ));
                }
                Some(n) => Some(*n.get_ref() as u32),
                None => None,
            };
            self.collector = Some(CollectorSection {
                file: file.to_owned(),
                state_dir,
                host: collector.get_ref().host.clone(),
                max_files,
            });
        }
        if let Some(metrics) = &raw.metrics {
            if let Some((other, ..)) = &self.metrics {
                return Err(at(metrics.span(), "metrics", format!("already set in {other}: set it in one file")));
            }
            let listen = match &metrics.get_ref().listen {
                None => None,
                Some(listen) => Some(listen.get_ref().parse::<std::net::SocketAddr>().map_err(|e| {
                    at(
                        listen.span(),
                        "metrics.listen",
                        format!("`{}`: {e} (write an address and port, e.g. \"127.0.0.1:9108\")", listen.get_ref()),
                    )
                })?),
            };
            let cloudwatch = match &metrics.get_ref().cloudwatch {
                None => None,
                Some(c) => Some(CloudWatchConfig {
                    namespace: c.namespace.as_ref().map_or_else(|| "Collector".to_owned(), |n| n.get_ref().clone()),
                    interval: duration(&c.interval, Duration::from_secs(60), &at, "metrics.cloudwatch.interval")?,
                    access: AwsAccess {
                        region: c.region.as_ref().map(|r| r.get_ref().clone()),
                        endpoint_url: c.endpoint_url.as_ref().map(|r| r.get_ref().clone()),
                        ..AwsAccess::default()
                    },
                }),
            };
            self.metrics = Some((file.to_owned(), listen, cloudwatch));
        }
        let flows = &mut self.flows;
        let flow_at = &mut self.flow_at;
        for (i, f) in raw.flow.iter().enumerate() {
            let key = |k: &str| format!("flow[{i}].{k}");
            let name = f.name.get_ref().clone();
            if name.is_empty() {
                return Err(at(f.name.span(), &key("name"), "must not be empty".into()));
            }
            if let Some(other) = flows.iter().position(|g: &Flow| g.name == name) {
                return Err(at(
                    f.name.span(),
                    &key("name"),
                    format!("`{name}` is already a flow ({})", flow_at[other]),
                ));
            }
            flow_at.push(format!("{file}:{}", line_of(text, f.name.span().start)));
            if f.paths.get_ref().is_empty() {
                return Err(at(f.paths.span(), &key("paths"), "needs at least one glob".into()));
            }
            let mut paths = Vec::new();
            for p in f.paths.get_ref() {
                pattern(p, &at, &key("paths"))?;
                paths.push(p.get_ref().clone());
            }
            let exclude = f.exclude.iter().map(|p| pattern(p, &at, &key("exclude"))).collect::<Result<_, _>>()?;
            let initial_position = match f.initial_position.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None | Some(("start", _)) => InitialPosition::Start,
                Some(("end", _)) => InitialPosition::End,
                Some((other, span)) => {
                    return Err(at(
                        span,
                        &key("initial_position"),
                        format!("`{other}`: expected \"start\" or \"end\""),
                    ));
                }
            };
            let multiline_start = match &f.multiline_start {
                Some(re) => Some(
                    crate::line_regex::compile(re.get_ref())
                        .map_err(|e| at(re.span(), &key("multiline_start"), format!("bad regex: {e}")))?,
                ),
                None => None,
            };
            let sink = sinks::sink(f.sink.get_ref(), &at, &key("sink"))?;
            // A Kinesis record holds at most 1 MiB with its partition key; a Firehose record
            // 1,000 KiB with the newline the sink adds.
            let limit = match sink {
                SinkConfig::Kinesis(_) => KINESIS_RECORD_LIMIT - KINESIS_KEY_ROOM,
                SinkConfig::Firehose(_) => FIREHOSE_RECORD_LIMIT - 1,
                _ => 1 << 30,
            };
            let max_record_bytes = match &f.max_record_bytes {
                Some(n) if *n.get_ref() < 16 || *n.get_ref() as usize > limit => {
                    return Err(at(
                        n.span(),
                        &key("max_record_bytes"),
                        format!("must be between 16 and {limit} for this sink"),
                    ));
                }
                Some(n) => *n.get_ref() as usize,
                None => limit.min(1024 * 1024),
            };
            flows.push(Flow {
                name,
                paths,
                exclude,
                initial_position,
                multiline_start,
                multiline_flush: duration(&f.multiline_flush, Duration::from_secs(1), &at, &key("multiline_flush"))?,
                skip_header_lines: f.skip_header_lines.unwrap_or(0),
                max_record_bytes,
                truncated_terminator: f.truncated_terminator.clone().unwrap_or_else(|| "\n".into()).into_bytes(),
                rotated_idle: duration(&f.rotated_idle, DEFAULT_ROTATED_IDLE, &at, &key("rotated_idle"))?,
                max_batch_age: duration(&f.max_batch_age, DEFAULT_MAX_BATCH_AGE, &at, &key("max_batch_age"))?,
                sweep_interval: duration(&f.sweep_interval, Duration::from_secs(10), &at, &key("sweep_interval"))?,
                transforms: pipeline(f, &at, &key)?,
                sink,
            });
        }
        Ok(())
    }
}

pub(super) type At<'a> = dyn Fn(Range<usize>, &str, String) -> ConfigError + 'a;

fn pipeline(f: &raw::Flow, at: &At, key: &dyn Fn(&str) -> String) -> Result<Pipeline, ConfigError> {
    let mut steps = Vec::new();
    for (i, t) in f.transform.iter().enumerate() {
        let key = |k: &str| key(&format!("transform[{i}].{k}"));
        steps.push(step(t.get_ref(), at, &key)?);
    }
    let drop_unparsed = match f.on_parse_error.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("raw", _)) => false,
        Some(("drop", _)) => true,
        Some((other, span)) => {
            return Err(at(span, &key("on_parse_error"), format!("`{other}`: expected \"raw\" or \"drop\"")));
        }
    };
    Ok(Pipeline { steps, drop_unparsed })
}

fn step(t: &raw::Transform, at: &At, key: &dyn Fn(&str) -> String) -> Result<Step, ConfigError> {
    let kind = t.kind.get_ref().as_str();
    // Each kind's own keys; any other key given is an error, not ignored.
    let own: &[&str] = match kind {
        "single_line" | "add_writer" | "add_ec2_metadata" | "add_kubernetes" => &[],
        "csv_to_json" => &["fields", "delimiter"],
        "log_to_json" => &["format", "pattern", "fields"],
        "add_metadata" => &["metadata", "timestamp"],
        other => {
            return Err(at(
                t.kind.span(),
                &key("kind"),
                format!(
                    "`{other}`: expected single_line, csv_to_json, log_to_json, add_metadata, add_writer, add_ec2_metadata or add_kubernetes"
                ),
            ));
        }
    };
    let given = [
        ("format", t.format.as_ref().map(|v| v.span())),
        ("pattern", t.pattern.as_ref().map(|v| v.span())),
        ("fields", t.fields.as_ref().map(|v| v.span())),
        ("delimiter", t.delimiter.as_ref().map(|v| v.span())),
        ("metadata", t.metadata.as_ref().map(|v| v.span())),
        ("timestamp", t.timestamp.as_ref().map(|v| v.span())),
    ];
    if let Some((name, Some(span))) = given.into_iter().find(|(name, span)| span.is_some() && !own.contains(name)) {
        return Err(at(span, &key(name), format!("`{kind}` takes no `{name}`")));
    }
    let fields = t.fields.as_ref().map(|f| f.get_ref().clone());
    Ok(match kind {
        "single_line" => Step::SingleLine,
        "add_writer" => Step::AddWriter,
        "add_ec2_metadata" => Step::AddEc2Metadata,
        "add_kubernetes" => Step::AddKubernetes,
        "csv_to_json" => {
            let Some(fields) = fields.filter(|f| !f.is_empty()) else {
                return Err(at(
                    t.kind.span(),
                    &key("fields"),
                    "csv_to_json needs the values' names in `fields`".into(),
                ));
            };
            let delimiter = match &t.delimiter {
                None => b',',
                Some(d) => match d.get_ref().as_bytes() {
                    [b] if *b != b'"' && *b != b'\n' => *b,
                    _ => {
                        return Err(at(
                            d.span(),
                            &key("delimiter"),
                            format!("`{}`: expected one character", d.get_ref()),
                        ));
                    }
                },
            };
            Step::CsvToJson { fields, delimiter }
        }
        "log_to_json" => {
            let parser = match (&t.format, &t.pattern) {
                (Some(format), None) => LogParser::format(format.get_ref(), fields),
                (None, Some(pattern)) => LogParser::pattern(pattern.get_ref(), fields),
                (Some(_), Some(pattern)) => {
                    return Err(at(pattern.span(), &key("pattern"), "give `format` or `pattern`, not both".into()));
                }
                (None, None) => {
                    return Err(at(
                        t.kind.span(),
                        &key("format"),
                        "log_to_json needs a `format` or a `pattern`".into(),
                    ));
                }
            };
            let span = t.format.as_ref().or(t.pattern.as_ref()).map(|v| v.span()).unwrap_or(0..0);
            let name = if t.format.is_some() { "format" } else { "pattern" };
            Step::LogToJson(parser.map_err(|e| at(span, &key(name), e))?)
        }
        "add_metadata" => {
            let mut fields = serde_json::Map::new();
            if let Some(table) = &t.metadata {
                for (name, value) in table.get_ref() {
                    let value =
                        serde_json::to_value(value).map_err(|e| at(table.span(), &key("metadata"), e.to_string()))?;
                    fields.insert(name.clone(), value);
                }
            }
            let timestamp = t.timestamp.as_ref().is_some_and(|v| *v.get_ref());
            if fields.is_empty() && !timestamp {
                return Err(at(
                    t.kind.span(),
                    &key("metadata"),
                    "add_metadata needs `metadata` or `timestamp = true`".into(),
                ));
            }
            Step::AddMetadata { fields, timestamp }
        }
        _ => unreachable!("kinds checked above"),
    })
}

fn pattern(p: &Spanned<String>, at: &At, key: &str) -> Result<glob::Pattern, ConfigError> {
    if !p.get_ref().starts_with('/') {
        return Err(at(p.span(), key, format!("`{}` must be an absolute path", p.get_ref())));
    }
    glob::Pattern::new(p.get_ref()).map_err(|e| at(p.span(), key, format!("`{}`: {e}", p.get_ref())))
}

pub(super) fn duration(
    v: &Option<Spanned<String>>,
    default: Duration,
    at: &At,
    key: &str,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.get_ref())
            .map_err(|e| at(s.span(), key, format!("`{}`: {e} (write e.g. \"500ms\", \"5m\")", s.get_ref()))),
    }
}

/// `${NAME}` replaced by the environment variable NAME (an unset one is an error, so a typo
/// does not ship to an empty stream name); `$${` stands for a literal `${`. Expanded before
/// parsing, so a value's line stays where it was written (values hold no newlines). Not in
/// comments: a line commented out keeps its `${NAME}` as written.
fn expand_env(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let comments = comment_spans(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let offset = text.len() - rest.len() + at;
        if comments.iter().any(|c| c.contains(&offset)) {
            out.push_str(&rest[..at + 2]);
            rest = &rest[at + 2..];
            continue;
        }
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else { return Err((offset, "`${` without a closing `}`".into())) };
        let name = &rest[at + 2..at + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((offset, format!("`${{{name}}}`: not a variable name")));
        }
        let value =
            var(name).ok_or_else(|| (offset, format!("${{{name}}}: environment variable {name} is not set")))?;
        if value.contains('\n') {
            return Err((offset, format!("${{{name}}}: the value holds a newline")));
        }
        out.push_str(&value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the TOML comments of `text` are: from a `#` outside any string to the end of its
/// line. Strings: "basic" (with \ escapes), 'literal', and both multi-line forms.
fn comment_spans(text: &str) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let line_end = |from: usize| text[from..].find('\n').map_or(b.len(), |n| from + n);
    // Just past the first `close` at or after `from` (in basic strings a backslash escapes
    // the byte after it), or the end of the text.
    let past = |from: usize, close: &str, escapes: bool| {
        let mut i = from;
        while i < b.len() {
            if escapes && b[i] == b'\\' {
                i += 2;
            } else if text.get(i..).is_some_and(|t| t.starts_with(close)) {
                return i + close.len();
            } else {
                i += 1;
            }
        }
        b.len()
    };
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at = &text[i..];
        i = if at.starts_with('#') {
            let end = line_end(i);
            spans.push(i..end);
            end
        } else if at.starts_with("\"\"\"") {
            past(i + 3, "\"\"\"", true)
        } else if at.starts_with("'''") {
            past(i + 3, "'''", false)
        } else if at.starts_with('"') {
            past(i + 1, "\"", true).min(line_end(i))
        } else if at.starts_with('\'') {
            past(i + 1, "'", false).min(line_end(i))
        } else {
            i + at.chars().next().map_or(1, char::len_utf8)
        };
        // A multi-byte character after a backslash can leave `i` inside it.
        while i < b.len() && !text.is_char_boundary(i) {
            i += 1;
        }
    }
    spans
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key on the line of a parse error, for errors the TOML parser reports by position.
fn key_near(text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else { return "-".into() };
    let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('[')).unwrap_or("-").to_owned()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests;
