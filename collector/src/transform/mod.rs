//! Per-flow record transforms, applied in order between the framer and the sink (the
//! Kinesis Agent's dataProcessingOptions, and what the kernel adds: the writer's process
//! and container). A record is text until a parser (csv_to_json, log_to_json) turns it
//! into a JSON object; the add_* steps add fields to that object (a text record becomes
//! `{"message": text}` first). A record a parser cannot read is shipped as it was read and
//! counted, or dropped and counted when the flow says `on_parse_error = "drop"`.

mod csv;
pub mod ec2;
pub mod log_formats;

use std::path::Path;

use serde_json::{Map, Value};

use crate::sink::Writer;

#[derive(Clone, Debug)]
pub enum Step {
    /// A multiline record on one line: each line trimmed, joined by one space.
    SingleLine,
    CsvToJson {
        fields: Vec<String>,
        delimiter: u8,
    },
    LogToJson(log_formats::LogParser),
    /// Fixed fields, and the time the record was read when `timestamp`.
    AddMetadata {
        fields: Map<String, Value>,
        timestamp: bool,
    },
    /// pid, comm, cgroup and container_id of the process that wrote the file.
    AddWriter,
    /// `ec2`: the instance's identity from IMDSv2, fetched at start-up.
    AddEc2Metadata,
    /// `kubernetes`: namespace, pod, pod_uid and container from a /var/log/pods path.
    AddKubernetes,
}

#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    pub steps: Vec<Step>,
    /// A record no parser could read is dropped (else shipped as read).
    pub drop_unparsed: bool,
}

/// What a step may add besides the record itself.
pub struct Context<'a> {
    pub path: &'a Path,
    pub writer: Option<&'a Writer>,
    pub ec2: Option<&'a Map<String, Value>>,
}

/// A record after the pipeline.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Text(Vec<u8>),
    /// A serialized JSON object.
    Json(Vec<u8>),
    /// A parser could not read it (the caller ships it as read or drops it).
    Unparsed,
}

/// A record between two steps of a pipeline.
enum Content {
    Text(Vec<u8>),
    Object(Map<String, Value>),
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn needs_writer(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::AddWriter))
    }

    pub fn needs_ec2(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::AddEc2Metadata))
    }

    pub fn apply(&self, data: &[u8], cx: &Context<'_>) -> Output {
        let mut record = Content::Text(data.to_vec());
        for step in &self.steps {
            record = match (step, record) {
                (Step::SingleLine, Content::Text(text)) => Content::Text(single_line(&text)),
                (Step::SingleLine, Content::Object(mut o)) => {
                    for v in o.values_mut() {
                        if let Value::String(s) = v {
                            *s = String::from_utf8(single_line(s.as_bytes())).expect("trimmed UTF-8 stays UTF-8");
                        }
                    }
                    Content::Object(o)
                }
                (Step::CsvToJson { fields, delimiter }, Content::Text(text)) => {
                    match csv::split(&String::from_utf8_lossy(&text), *delimiter) {
                        Some(values) if values.len() == fields.len() => {
                            Content::Object(fields.iter().cloned().zip(values.into_iter().map(Value::String)).collect())
                        }
                        _ => return Output::Unparsed,
                    }
                }
                (Step::LogToJson(parser), Content::Text(text)) => match parser.parse(&text) {
                    Some(o) => Content::Object(o),
                    None => return Output::Unparsed,
                },
                // A record already parsed is not parsed twice.
                (Step::CsvToJson { .. } | Step::LogToJson(_), record) => record,
                (add, record) => {
                    let mut o = match record {
                        Content::Object(o) => o,
                        Content::Text(text) => {
                            Map::from_iter([("message".to_owned(), String::from_utf8_lossy(&text).into_owned().into())])
                        }
                    };
                    add_fields(add, &mut o, cx);
                    Content::Object(o)
                }
            };
        }
        match record {
            Content::Text(text) => Output::Text(text),
            Content::Object(o) => Output::Json(serde_json::to_vec(&o).expect("a JSON map serializes")),
        }
    }
}

fn add_fields(step: &Step, o: &mut Map<String, Value>, cx: &Context<'_>) {
    match step {
        Step::AddMetadata { fields, timestamp } => {
            o.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            if *timestamp {
                o.insert(
                    "timestamp".into(),
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().into(),
                );
            }
        }
        Step::AddWriter => {
            if let Some(w) = cx.writer {
                o.insert("pid".into(), w.pid.into());
                o.insert("comm".into(), w.comm.clone().into());
                if let Some(cgroup) = &w.cgroup {
                    o.insert("cgroup".into(), cgroup.clone().into());
                }
                if let Some(id) = &w.container_id {
                    o.insert("container_id".into(), id.clone().into());
                }
            }
        }
        Step::AddEc2Metadata => {
            if let Some(ec2) = cx.ec2 {
                o.insert("ec2".into(), Value::Object(ec2.clone()));
            }
        }
        Step::AddKubernetes => {
            if let Some(k) = kubernetes_from_path(cx.path) {
                o.insert("kubernetes".into(), Value::Object(k));
            }
        }
        Step::SingleLine | Step::CsvToJson { .. } | Step::LogToJson(_) => unreachable!("not an add step"),
    }
}

fn single_line(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    out
}

/// The kubelet's layout: `/var/log/pods/<namespace>_<pod>_<pod uid>/<container>/<n>.log`.
fn kubernetes_from_path(path: &Path) -> Option<Map<String, Value>> {
    let mut parts = path.strip_prefix("/var/log/pods").ok()?.iter().map(|p| p.to_str());
    let (pod_dir, container) = (parts.next()??, parts.next()??);
    let mut pod = pod_dir.splitn(3, '_');
    let (namespace, name, uid) = (pod.next()?, pod.next()?, pod.next()?);
    Some(Map::from_iter([
        ("namespace".to_owned(), namespace.into()),
        ("pod".to_owned(), name.into()),
        ("pod_uid".to_owned(), uid.into()),
        ("container".to_owned(), container.into()),
    ]))
}

#[cfg(test)]
mod tests;
