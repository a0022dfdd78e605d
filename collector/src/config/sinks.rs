//! The `[flow.sink]` table: each kind's keys, checked once into a `SinkConfig`, every
//! error naming the file, line and key.

use std::{ops::Range, path::PathBuf};

use super::{
    At, AwsAccess, ConfigError, DEFAULT_REQUEST_TIMEOUT, FileFormat, FirehoseConfig, KINESIS_RECORD_LIMIT,
    KinesisConfig, PartitionKey, REQUEST_TIMEOUTS, SinkConfig, duration, raw,
};

pub(super) fn sink(s: &raw::Sink, at: &At, key: &str) -> Result<SinkConfig, ConfigError> {
    match s.kind.get_ref().as_str() {
        "file" => {
            only_aws(s, at, key)?;
            let path = s
                .path
                .as_ref()
                .ok_or_else(|| at(s.kind.span(), &format!("{key}.path"), "the file sink needs a path".into()))?;
            let format = match s.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
                None | Some(("json", _)) => FileFormat::Json,
                Some(("raw", _)) => FileFormat::Raw,
                Some((other, span)) => {
                    return Err(at(span, &format!("{key}.format"), format!("`{other}`: expected \"raw\" or \"json\"")));
                }
            };
            Ok(SinkConfig::File { path: PathBuf::from(path.get_ref()), format })
        }
        "null" => {
            only_aws(s, at, key)?;
            Ok(SinkConfig::Null)
        }
        "kinesis" => {
            let stream = s.stream.as_ref().ok_or_else(|| {
                at(s.kind.span(), &format!("{key}.stream"), "the kinesis sink needs a stream name".into())
            })?;
            let partition_key = match s.partition_key.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
                None | Some(("file", _)) => PartitionKey::File,
                Some(("deterministic", _)) => PartitionKey::Deterministic,
                Some(("random", _)) => PartitionKey::Random,
                Some((other, span)) => {
                    return Err(at(
                        span,
                        &format!("{key}.partition_key"),
                        format!("`{other}`: expected \"file\", \"deterministic\" or \"random\""),
                    ));
                }
            };
            let aggregate = kinesis_aggregate(s, partition_key, at, key)?;
            only_for(s.delivery_stream.as_ref().map(|v| v.span()), "delivery_stream", "firehose", at, key)?;
            Ok(SinkConfig::Kinesis(KinesisConfig {
                stream: stream.get_ref().clone(),
                access: aws_access(s, at, key)?,
                partition_key,
                envelope: envelope(s, at, key)?,
                requests_in_flight: requests_in_flight(s, at, key)?,
                aggregate,
            }))
        }
        "firehose" => {
            let delivery_stream = s.delivery_stream.as_ref().ok_or_else(|| {
                at(s.kind.span(), &format!("{key}.delivery_stream"), "the firehose sink needs a delivery_stream".into())
            })?;
            only_for(s.stream.as_ref().map(|v| v.span()), "stream", "kinesis", at, key)?;
            only_for(s.partition_key.as_ref().map(|v| v.span()), "partition_key", "kinesis", at, key)?;
            only_for(s.aggregate_max_bytes.as_ref().map(|v| v.span()), "aggregate_max_bytes", "kinesis", at, key)?;
            Ok(SinkConfig::Firehose(FirehoseConfig {
                delivery_stream: delivery_stream.get_ref().clone(),
                access: aws_access(s, at, key)?,
                envelope: envelope(s, at, key)?,
                aggregate: s.aggregate.as_ref().is_some_and(|v| *v.get_ref()),
                requests_in_flight: requests_in_flight(s, at, key)?,
            }))
        }
        other => Err(at(
            s.kind.span(),
            &format!("{key}.kind"),
            format!("`{other}`: expected \"kinesis\", \"firehose\", \"file\" or \"null\""),
        )),
    }
}

/// Four PUT payload units (25 KB each): an aggregated record wastes at most one record's
/// bytes of its last unit (1% for 1 KB lines; at 25 KB it would be 4%), a failed one sends
/// 100 KB again, and one is a tenth of a shard's 1 MiB/s, so a busy file's records still
/// share the shard's second. Bigger saves next to nothing; at the default max_batch_age
/// (20 ms) only a file writing more than 5 MB/s fills them.
pub const DEFAULT_AGGREGATE_MAX_BYTES: usize = 100_000;
const AGGREGATE_MAX_BYTES: std::ops::RangeInclusive<i64> = 1_024..=KINESIS_RECORD_LIMIT as i64;

/// `aggregate` and `aggregate_max_bytes` of a kinesis sink.
fn kinesis_aggregate(
    s: &raw::Sink,
    partition_key: PartitionKey,
    at: &At,
    key: &str,
) -> Result<Option<usize>, ConfigError> {
    let on = s.aggregate.as_ref().is_some_and(|v| *v.get_ref());
    if let Some(max) = &s.aggregate_max_bytes {
        if !on {
            return Err(at(max.span(), &format!("{key}.aggregate_max_bytes"), "needs aggregate = true".into()));
        }
        if !AGGREGATE_MAX_BYTES.contains(max.get_ref()) {
            return Err(at(
                max.span(),
                &format!("{key}.aggregate_max_bytes"),
                format!("{}: expected {} to {}", max.get_ref(), AGGREGATE_MAX_BYTES.start(), AGGREGATE_MAX_BYTES.end()),
            ));
        }
    }
    if on && partition_key != PartitionKey::File {
        let span = s.partition_key.as_ref().map_or(0..0, |v| v.span());
        return Err(at(
            span,
            &format!("{key}.partition_key"),
            "aggregate = true needs partition_key = \"file\" (an aggregated record holds one file's records, under one key)".into(),
        ));
    }
    Ok(on.then(|| s.aggregate_max_bytes.as_ref().map_or(DEFAULT_AGGREGATE_MAX_BYTES, |v| *v.get_ref() as usize)))
}

/// Requests a sink keeps out at once. See BENCHMARKS.md for how the default was chosen.
pub const DEFAULT_REQUESTS_IN_FLIGHT: usize = 4;
const MAX_REQUESTS_IN_FLIGHT: i64 = 64;

fn requests_in_flight(s: &raw::Sink, at: &At, key: &str) -> Result<usize, ConfigError> {
    match s.requests_in_flight.as_ref() {
        None => Ok(DEFAULT_REQUESTS_IN_FLIGHT),
        Some(v) if (1..=MAX_REQUESTS_IN_FLIGHT).contains(v.get_ref()) => Ok(*v.get_ref() as usize),
        Some(v) => Err(at(
            v.span(),
            &format!("{key}.requests_in_flight"),
            format!("{}: expected 1 to {MAX_REQUESTS_IN_FLIGHT}", v.get_ref()),
        )),
    }
}

/// The AWS sinks' keys in a file or null sink.
fn only_aws(s: &raw::Sink, at: &At, key: &str) -> Result<(), ConfigError> {
    only_for(s.requests_in_flight.as_ref().map(|v| v.span()), "requests_in_flight", "kinesis or firehose", at, key)?;
    only_for(s.request_timeout.as_ref().map(|v| v.span()), "request_timeout", "kinesis or firehose", at, key)?;
    only_for(s.aggregate.as_ref().map(|v| v.span()), "aggregate", "kinesis or firehose", at, key)?;
    only_for(s.aggregate_max_bytes.as_ref().map(|v| v.span()), "aggregate_max_bytes", "kinesis", at, key)
}

/// A key that belongs to another sink kind is an error, not silently ignored.
fn only_for(span: Option<Range<usize>>, name: &str, kind: &str, at: &At, key: &str) -> Result<(), ConfigError> {
    match span {
        Some(span) => Err(at(span, &format!("{key}.{name}"), format!("only the {kind} sink takes `{name}`"))),
        None => Ok(()),
    }
}

fn envelope(s: &raw::Sink, at: &At, key: &str) -> Result<bool, ConfigError> {
    match s.envelope.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("none", _)) => Ok(false),
        Some(("json", _)) => Ok(true),
        Some((other, span)) => {
            Err(at(span, &format!("{key}.envelope"), format!("`{other}`: expected \"none\" or \"json\"")))
        }
    }
}

fn aws_access(s: &raw::Sink, at: &At, key: &str) -> Result<AwsAccess, ConfigError> {
    let text = |v: &Option<toml::Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
    if let Some(url) = &s.endpoint_url
        && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
    {
        return Err(at(
            url.span(),
            &format!("{key}.endpoint_url"),
            format!("`{}`: expected an http(s) URL", url.get_ref()),
        ));
    }
    if s.external_id.is_some() && s.role_arn.is_none() {
        let span = s.external_id.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(at(span, &format!("{key}.external_id"), "needs role_arn".into()));
    }
    let request_timeout = match &s.request_timeout {
        None => None,
        Some(v) => {
            let key = format!("{key}.request_timeout");
            let timeout = duration(&s.request_timeout, DEFAULT_REQUEST_TIMEOUT, at, &key)?;
            if !REQUEST_TIMEOUTS.contains(&timeout) {
                return Err(at(v.span(), &key, format!("`{}`: expected 1s to 5m", v.get_ref())));
            }
            Some(timeout)
        }
    };
    Ok(AwsAccess {
        region: text(&s.region),
        endpoint_url: text(&s.endpoint_url),
        role_arn: text(&s.role_arn),
        external_id: text(&s.external_id),
        request_timeout,
    })
}
