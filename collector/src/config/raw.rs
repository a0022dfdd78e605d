//! The TOML file as written: serde structs that refuse unknown keys and keep each value's
//! position, so validation (mod.rs) can name the line of a bad value.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub collector: Option<Spanned<Collector>>,
    #[serde(default)]
    pub flow: Vec<Flow>,
    pub metrics: Option<Spanned<Metrics>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Option<Spanned<String>>,
    pub cloudwatch: Option<CloudWatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatch {
    pub namespace: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub endpoint_url: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    pub state_dir: Option<Spanned<String>>,
    pub host: Option<String>,
    pub max_files: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: Spanned<String>,
    pub paths: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    pub initial_position: Option<Spanned<String>>,
    pub multiline_start: Option<Spanned<String>>,
    pub multiline_flush: Option<Spanned<String>>,
    pub skip_header_lines: Option<u32>,
    pub max_record_bytes: Option<Spanned<i64>>,
    pub truncated_terminator: Option<String>,
    pub rotated_idle: Option<Spanned<String>>,
    pub max_batch_age: Option<Spanned<String>>,
    pub sweep_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub transform: Vec<Spanned<Transform>>,
    pub on_parse_error: Option<Spanned<String>>,
    pub sink: Spanned<Sink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    pub kind: Spanned<String>,
    /// log_to_json
    pub format: Option<Spanned<String>>,
    pub pattern: Option<Spanned<String>>,
    /// csv_to_json, log_to_json: the names of the values
    pub fields: Option<Spanned<Vec<String>>>,
    /// csv_to_json
    pub delimiter: Option<Spanned<String>>,
    /// add_metadata
    pub metadata: Option<Spanned<toml::Table>>,
    pub timestamp: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    pub kind: Spanned<String>,
    /// file
    pub path: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    /// kinesis
    pub stream: Option<Spanned<String>>,
    pub partition_key: Option<Spanned<String>>,
    /// firehose
    pub delivery_stream: Option<Spanned<String>>,
    /// kinesis and firehose
    pub aggregate: Option<Spanned<bool>>,
    /// kinesis (aggregated)
    pub aggregate_max_bytes: Option<Spanned<i64>>,
    /// kinesis and firehose
    pub region: Option<Spanned<String>>,
    pub endpoint_url: Option<Spanned<String>>,
    pub role_arn: Option<Spanned<String>>,
    pub external_id: Option<Spanned<String>>,
    pub envelope: Option<Spanned<String>>,
    pub requests_in_flight: Option<Spanned<i64>>,
    pub request_timeout: Option<Spanned<String>>,
}
