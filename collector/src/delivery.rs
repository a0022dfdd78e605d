//! Delivery: each flow's sink and what it last said, the transforms applied on the way, and
//! the checkpoints saved once the sink made what it took durable. The engine decides what
//! to ship and when a checkpoint is due; this carries it out and reports the outcome.

use std::{path::Path, time::Instant};

use anyhow::Context as _;
use collector_common::InodeKey;

use crate::{
    checkpoint::{self, Checkpoint, Identity, Store},
    config::{Config, Flow, SinkConfig},
    engine::{self, Engine},
    event_queue::EventQueue,
    framer::Framed,
    metrics::FlowCounters,
    sink::{Batch, Outgoing, Refused, Sink, Source, Writer, file::FileSink, null::NullSink},
    transform,
};

/// One flow's sink, and since when and why it fails, if it does.
pub struct FlowSink {
    pub sink: Box<dyn Sink + Send>,
    /// The error last logged, so a lasting failure is logged once.
    pub error: Option<String>,
    pub failing_since: Option<Instant>,
}

/// What the transforms made of a record: its new bytes and whether they are a JSON object,
/// or None when a parser could not read it.
type Transformed = Option<(Vec<u8>, bool)>;

/// The records to send of a file whose records went through transforms.
fn outgoing<'a>(flow: &Flow, framed: &'a Framed, transformed: &'a [Transformed]) -> Vec<Outgoing<'a>> {
    let mut out = Vec::new();
    for (i, r) in framed.records().iter().enumerate() {
        let (data, json) = match transformed.get(i) {
            Some(Some((data, json))) => (data.as_slice(), *json),
            Some(None) if flow.transforms.drop_unparsed => continue,
            Some(None) => (framed.data(r), false),
            None => break,
        };
        out.push(Outgoing { offset: r.offset, data, json });
    }
    out
}

/// What a record of a file is shipped with besides its bytes.
pub struct About<'a> {
    pub inode: InodeKey,
    pub path: &'a Path,
    pub writer: Option<&'a Writer>,
    /// Bytes the framer dropped from records over `max_record_bytes` so far, for the log.
    pub dropped_bytes: u64,
}

pub struct Delivery {
    pub flows: Vec<FlowSink>,
    /// The instance's identity, for flows that add it (read at start-up).
    ec2: Option<serde_json::Map<String, serde_json::Value>>,
    pub store: Store,
    /// Checkpoints that could not be saved (a full or read-only state directory), and since
    /// when they fail with which cause, logged once per cause.
    pub checkpoint_failures: u64,
    pub checkpoints_failing: Option<(Instant, String)>,
    /// Checkpoints saved since the last commit, and what each file's durable offset was
    /// before (to go back to if the commit fails).
    unsaved: Vec<(InodeKey, engine::Replaces)>,
}

/// A held file whose checkpoint is saved: its descriptor, its identity, and how to ask the
/// kernel how many truncations of it it has counted.
pub struct HeldFile<'a> {
    pub file: &'a std::fs::File,
    pub identity: &'a Identity,
    pub truncations: &'a dyn Fn() -> Option<u64>,
}

impl Delivery {
    pub fn open(config: &Config) -> anyhow::Result<Delivery> {
        let store = Store::open(&config.state_dir)?;
        let mut flows = Vec::new();
        for flow in &config.flows {
            let sink: Box<dyn Sink + Send> = match &flow.sink {
                SinkConfig::File { path, format } => Box::new(FileSink::open(path, *format, &config.host)?),
                SinkConfig::Null => Box::new(NullSink::default()),
                #[cfg(feature = "kinesis")]
                SinkConfig::Kinesis(k) => Box::new(crate::sink::kinesis::KinesisSink::open(k, &config.host)?),
                #[cfg(feature = "kinesis")]
                SinkConfig::Firehose(f) => Box::new(crate::sink::firehose::FirehoseSink::open(f, &config.host)?),
                #[cfg(not(feature = "kinesis"))]
                SinkConfig::Kinesis(_) | SinkConfig::Firehose(_) => {
                    anyhow::bail!("this collector was built without the AWS sinks")
                }
            };
            flows.push(FlowSink { sink, error: None, failing_since: None });
        }
        let ec2 = match config.flows.iter().find(|f| f.transforms.needs_ec2()) {
            Some(flow) => {
                let endpoint = crate::transform::ec2::endpoint();
                let identity = crate::transform::ec2::fetch(&endpoint).with_context(|| {
                    format!("flow `{}`: add_ec2_metadata: the instance metadata service at {endpoint}", flow.name)
                })?;
                tracing::info!(instance = %identity.get("instanceId").and_then(|v| v.as_str()).unwrap_or("?"), "instance metadata read");
                Some(identity)
            }
            None => None,
        };
        Ok(Delivery { flows, ec2, store, checkpoint_failures: 0, checkpoints_failing: None, unsaved: Vec::new() })
    }

    /// Sends records of many files of flow `index` to its sink, after the flow's
    /// transforms (one batch per file, no file twice), and counts what it took; the
    /// outcome per file, in order. `events` is drained while the sink waits.
    pub fn deliver(
        &mut self,
        index: usize,
        flow: &Flow,
        files: &[(About<'_>, &Framed)],
        counters: &mut FlowCounters,
        events: &mut EventQueue,
    ) -> Vec<engine::Delivery> {
        // Per file, per record: what the transforms made of it (None: shipped as read).
        let transformed: Vec<Vec<Transformed>> =
            files.iter().map(|(about, framed)| self.transform(flow, about, framed, counters)).collect();
        let outgoing: Vec<Vec<Outgoing<'_>>> = files
            .iter()
            .zip(&transformed)
            .map(|((_, framed), transformed)| outgoing(flow, framed, transformed))
            .collect();
        let batches: Vec<Batch<'_>> = files
            .iter()
            .zip(&transformed)
            .zip(&outgoing)
            .map(|(((about, framed), transformed), outgoing)| {
                let origin = Source { flow: &flow.name, path: about.path, inode: about.inode, writer: about.writer };
                if transformed.is_empty() { Batch::framed(origin, framed) } else { Batch::listed(origin, outgoing) }
            })
            .collect();
        // Batches the transforms emptied are not sent.
        let to_send: Vec<Batch<'_>> = batches.iter().filter(|b| !b.is_empty()).copied().collect();
        let sink = &mut self.flows[index].sink;
        let mut answers = if to_send.is_empty() {
            Vec::new()
        } else if sink.may_block() {
            events.while_waiting(|| sink.deliver(&to_send, &mut || {}))
        } else {
            sink.deliver(&to_send, &mut || events.drain_meanwhile())
        }
        .into_iter();
        let mut outcomes = Vec::with_capacity(files.len());
        let mut refused = false;
        for ((about, framed), batch) in files.iter().zip(&batches) {
            let answer = if batch.is_empty() { Ok(()) } else { answers.next().unwrap_or(Ok(())) };
            outcomes.push(match answer {
                Ok(()) => {
                    counters.records_sent += batch.len() as u64;
                    counters.bytes_sent += batch.data_bytes(batch.len());
                    let cut = framed.cut();
                    counters.records_cut += cut as u64;
                    if cut > 0 {
                        tracing::warn!(flow = %flow.name, path = %about.path.display(), records = cut, limit = flow.max_record_bytes, dropped_bytes_total = about.dropped_bytes, "records longer than max_record_bytes were cut");
                    }
                    engine::Delivery::Accepted
                }
                Err(Refused { accepted, error, alone }) => {
                    counters.records_sent += accepted as u64;
                    counters.bytes_sent += batch.data_bytes(accepted);
                    let holds_to = batch.get(accepted).filter(|_| accepted > 0).map(|r| r.offset);
                    let e = format!("{error:#}");
                    if alone {
                        // The sink logged its throttling once per cause; the flow is fine.
                        tracing::debug!(path = %about.path.display(), pause = ?engine::FILE_RETRY_PAUSE, "records of one file refused: {e}");
                    } else {
                        refused = true;
                        if self.failed(index, &e) {
                            tracing::error!(flow = %flow.name, path = %about.path.display(), pause = ?engine::SINK_RETRY_PAUSE, "sink refused a batch; the bytes stay on disk and are read again: {e}");
                        }
                    }
                    engine::Delivery::Refused { holds_to, alone }
                }
            });
        }
        if !refused && !files.is_empty() {
            let state = &mut self.flows[index];
            if state.error.take().is_some() {
                tracing::info!(flow = %flow.name, "the sink accepts batches again");
            }
            state.failing_since = None;
        }
        outcomes
    }

    /// What the flow's transforms make of each record of a file; empty without transforms.
    fn transform(
        &self,
        flow: &Flow,
        about: &About<'_>,
        framed: &Framed,
        counters: &mut FlowCounters,
    ) -> Vec<Transformed> {
        if flow.transforms.is_empty() {
            return Vec::new();
        }
        let cx = transform::Context { path: about.path, writer: about.writer, ec2: self.ec2.as_ref() };
        let mut out = Vec::with_capacity(framed.records().len());
        for r in framed.records() {
            out.push(match flow.transforms.apply(framed.data(r), &cx) {
                transform::Output::Text(text) => Some((text, false)),
                transform::Output::Json(object) => Some((object, true)),
                transform::Output::Unparsed => {
                    counters.records_unparsed += 1;
                    counters.records_dropped += u64::from(flow.transforms.drop_unparsed);
                    None
                }
            });
        }
        out
    }

    /// `flow`'s sink failed with `error`: true when the error is not the one last
    /// reported, so the caller logs it (once).
    fn failed(&mut self, flow: usize, error: &str) -> bool {
        let state = &mut self.flows[flow];
        state.failing_since.get_or_insert_with(Instant::now);
        let new = state.error.as_deref() != Some(error);
        if new {
            state.error = Some(error.to_owned());
        }
        new
    }

    /// Saves the checkpoint of `inode` if the engine says it is due: what it passes is
    /// made durable in the sink first. `held`: the file of its record
    /// (`Engine::checkpoint_record`), itself or a copy.
    pub fn checkpoint(
        &mut self,
        engine: &mut Engine,
        config: &Config,
        inode: InodeKey,
        held: HeldFile<'_>,
        force: bool,
    ) {
        let now = Instant::now();
        let Some(due) = engine.checkpoint_due(&inode, force, now) else { return };
        if let Err(e) = self.flows[due.flow].sink.make_durable() {
            self.durability_failed(engine, config, due.flow, e);
            return;
        }
        let last_bytes = checkpoint::LastBytes::of(held.file, due.acknowledged);
        // After the bytes: a truncation counted then began after they were read.
        let truncations = (held.truncations)();
        let found =
            engine::Found { bytes_before: last_bytes.is_some(), truncations, looked_ns: crate::reader::boot_ns() };
        let Some(replaced) = engine.made_durable(&inode, due.acknowledged, found, now) else {
            return;
        };
        let c = Checkpoint {
            version: checkpoint::FORMAT_VERSION,
            dev: due.record.dev,
            ino: due.record.ino,
            identity: held.identity.clone(),
            flow: config.flows[due.flow].name.clone(),
            path: engine.path(&due.record).map(Path::to_owned).unwrap_or_default(),
            acknowledged: due.acknowledged,
            derived: false,
            last_bytes,
        };
        self.store.save(c);
        self.unsaved.push((inode, replaced));
    }

    /// Makes the checkpoints of this pass durable, all with one fsync: on failure the files
    /// they were for are checkpointed again later (`Engine::checkpoint_failed`).
    pub fn commit(&mut self, engine: &mut Engine) {
        if !self.store.has_pending() {
            return;
        }
        let saved = self.store.commit();
        if saved.is_err() {
            let now = Instant::now();
            // Latest first: a file saved twice goes back to where it was before both.
            for (inode, replaced) in self.unsaved.drain(..).rev() {
                engine.checkpoint_failed(&inode, replaced, now);
            }
        }
        self.unsaved.clear();
        self.checkpoint_saved(saved);
    }

    /// A derived file is recorded in the state directory, so a restart does not take it
    /// for a log of its own.
    pub fn remember_derived(&mut self, inode: InodeKey, path: &Path, identity: Identity) {
        let c = Checkpoint {
            version: checkpoint::FORMAT_VERSION,
            dev: inode.dev,
            ino: inode.ino,
            identity,
            flow: String::new(),
            path: path.to_owned(),
            acknowledged: 0,
            derived: true,
            last_bytes: None,
        };
        self.store.save(c);
    }

    /// Counts and says (once per cause) that a checkpoint could not be saved, and when they
    /// are saved again.
    fn checkpoint_saved(&mut self, saved: anyhow::Result<()>) {
        match saved {
            Ok(()) => {
                if let Some((since, _)) = self.checkpoints_failing.take() {
                    tracing::info!(dir = %self.store.dir().display(), after = ?since.elapsed(), "checkpoints are saved again");
                }
            }
            Err(e) => {
                self.checkpoint_failures += 1;
                let cause = e.root_cause().to_string();
                if self.checkpoints_failing.as_ref().is_some_and(|(_, c)| *c == cause) {
                    return;
                }
                tracing::error!(dir = %self.store.dir().display(), "cannot save checkpoints: {e:#}. Shipping goes on; until they are saved again, a restart sends again what was shipped since the last one saved");
                let since = self.checkpoints_failing.take().map_or_else(Instant::now, |(since, _)| since);
                self.checkpoints_failing = Some((since, cause));
            }
        }
    }

    /// The sink could not make what it took durable (an fsync failed): the flow's files
    /// are read again from their checkpoints after a pause (`Engine::durability_failed`).
    pub fn durability_failed(&mut self, engine: &mut Engine, config: &Config, flow: usize, error: anyhow::Error) {
        engine.durability_failed(flow, Instant::now());
        let e = format!("{error:#}");
        if self.failed(flow, &e) {
            tracing::error!(flow = %config.flows[flow].name, pause = ?engine::SINK_RETRY_PAUSE, "the sink could not make records durable; its files are read again from their checkpoints: {e}");
        }
    }

    /// SIGHUP: sinks that write to a path open it again (logrotate's `create` rotated it,
    /// then `postrotate` sent the signal, as for rsyslog or nginx).
    pub fn reopen(&mut self, engine: &mut Engine, config: &Config) {
        for flow in 0..self.flows.len() {
            // Checkpoints may pass what went to the file being let go.
            if let Err(e) = self.flows[flow].sink.make_durable() {
                self.durability_failed(engine, config, flow, e);
                continue;
            }
            let name = &config.flows[flow].name;
            match self.flows[flow].sink.reopen() {
                Ok(Some(path)) => tracing::info!(flow = %name, %path, "SIGHUP: reopened the output"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(flow = %name, "SIGHUP: cannot reopen the output, writing on to the file it had: {e:#}")
                }
            }
        }
    }
}
