//! `kind = "firehose"`: Amazon Data Firehose through PutRecordBatch.
//!
//! Firehose concatenates records into its destination's objects, so each record ends with a
//! newline. Requests hold at most 500 records and 4 MiB, a record at most 1,000 KiB. With
//! `aggregate = true`, consecutive whole records are packed into one Firehose record up to
//! that limit (Firehose bills per record, rounded up to 5 KB); a record is never split.
//! Requests across files, requests in flight, retries, the accepted prefix and the error
//! handling are the Kinesis sink's (batch.rs).

use aws_sdk_firehose::{Client, primitives::Blob, types::Record};

use super::{
    Batch, Outgoing, Refused, Sink,
    batch::{CallFailed, Entry, Limits, Stats, send_files},
    envelope,
};
use crate::aws::{RetryLog, SinkRuntime, call_failed, describe, report_destination, sdk_config};
use crate::config::{FIREHOSE_RECORD_LIMIT, FirehoseConfig};

const fn limits() -> Limits {
    Limits { records: 500, bytes: 4 * 1024 * 1024 }
}

pub struct FirehoseSink {
    runtime: SinkRuntime,
    client: Client,
    config: FirehoseConfig,
    host: String,
    retries: RetryLog,
    pub stats: Stats,
}

impl FirehoseSink {
    pub fn open(config: &FirehoseConfig, host: &str) -> anyhow::Result<FirehoseSink> {
        let runtime = SinkRuntime::new()?;
        let client = Client::new(&runtime.block_on(sdk_config(&config.access))?);
        let sink = FirehoseSink {
            runtime,
            client,
            config: config.clone(),
            host: host.to_owned(),
            retries: RetryLog::default(),
            stats: Stats::default(),
        };
        sink.check_stream();
        Ok(sink)
    }

    /// Says at start-up whether the delivery stream is there (the collector starts either way).
    fn check_stream(&self) {
        let name = &self.config.delivery_stream;
        let checked = self.runtime.block_on(async {
            self.client
                .describe_delivery_stream()
                .delivery_stream_name(name)
                .send()
                .await
                .map(|out| {
                    let status = out.delivery_stream_description().map(|d| d.delivery_stream_status().as_str());
                    format!("status {}", status.unwrap_or("?"))
                })
                .map_err(|e| describe(&e))
        });
        report_destination("firehose delivery stream", name, checked);
    }
}

impl Sink for FirehoseSink {
    fn deliver(&mut self, batches: &[Batch<'_>], idle: &mut dyn FnMut()) -> Vec<Result<(), Refused>> {
        let heads: Vec<Option<envelope::Head>> =
            batches.iter().map(|b| self.config.envelope.then(|| envelope::Head::new(&self.host, &b.origin))).collect();
        let mut cuts = vec![0; batches.len()];
        let aggregate = self.config.aggregate;
        let files = batches
            .iter()
            .zip(heads.iter().zip(cuts.iter_mut()))
            .map(|(batch, (head, cut))| (pack(batch, head.as_ref(), aggregate, cut), batch.len()))
            .collect();
        let FirehoseSink { runtime, client, config, stats, .. } = &mut *self;
        let mut notes = Vec::new();
        let call = |request: &[Entry]| {
            let records = request
                .iter()
                .map(|e| Record::builder().data(Blob::new(e.data.clone())).build())
                .collect::<Result<Vec<_>, _>>();
            let put = client.put_record_batch().delivery_stream_name(&config.delivery_stream);
            async move {
                let records = records
                    .map_err(|e| CallFailed { what: format!("building PutRecordBatch: {e}"), retryable: false })?;
                let out = put.set_records(Some(records)).send().await.map_err(|e| call_failed(&e))?;
                Ok(out
                    .request_responses()
                    .iter()
                    .map(|r| r.error_code().map(|code| format!("{code}: {}", r.error_message().unwrap_or_default())))
                    .collect())
            }
        };
        let outcomes = send_files(files, limits(), config.requests_in_flight, runtime, call, stats, &mut notes, idle);
        self.stats.records_cut += cuts.iter().sum::<u64>();
        self.retries.outcomes(&self.config.delivery_stream, &notes, outcomes)
    }

    /// Sent as soon as one request's worth waits (500 records of ~100-byte lines): at high
    /// rates the requests then follow each other instead of queueing behind a 20 ms wait.
    fn full_batch_bytes(&self) -> u64 {
        64 << 10
    }

    fn retried(&self) -> u64 {
        self.stats.records_retried
    }
}

/// The batch as Firehose records, each of the daemon's records newline-terminated;
/// aggregated, packed whole into Firehose records of at most FIREHOSE_RECORD_LIMIT.
fn pack<'a>(
    batch: &'a Batch<'a>,
    head: Option<&'a envelope::Head>,
    aggregate: bool,
    cut: &'a mut u64,
) -> impl Iterator<Item = Entry> + 'a {
    let mut records = batch.records().enumerate();
    // A record that did not fit the entry before it: it starts the next one.
    let mut carried: Option<(usize, Vec<u8>)> = None;
    let mut encode = move |r: &Outgoing<'_>| {
        let mut data = envelope::encode_within(&batch.origin, head, r, FIREHOSE_RECORD_LIMIT - 1, cut);
        data.push(b'\n');
        data
    };
    std::iter::from_fn(move || {
        let (index, mut data) = carried.take().or_else(|| records.next().map(|(i, r)| (i, encode(&r))))?;
        if aggregate {
            for (i, r) in records.by_ref() {
                let more = encode(&r);
                if data.len() + more.len() > FIREHOSE_RECORD_LIMIT {
                    carried = Some((i, more));
                    break;
                }
                data.extend_from_slice(&more);
            }
        }
        Some(Entry { index, key: String::new(), data })
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use collector_common::InodeKey;

    use super::*;
    use crate::sink::{Source, outgoing as records};

    /// Every entry of `batch`, with the envelope (host "h") when `wrap`.
    fn packed(batch: &Batch<'_>, wrap: bool, aggregate: bool, cut: &mut u64) -> Vec<Entry> {
        let head = wrap.then(|| envelope::Head::new("h", &batch.origin));
        pack(batch, head.as_ref(), aggregate, cut).collect()
    }

    fn batch<'a>(records: &'a [Outgoing<'a>]) -> Batch<'a> {
        Batch::listed(Source { flow: "f", path: Path::new("/x"), inode: InodeKey::new(1, 2), writer: None }, records)
    }

    #[test]
    fn each_record_ends_with_a_newline() {
        let lines = vec![b"a".to_vec(), b"bb".to_vec()];
        let entries = packed(&batch(&records(&lines)), false, false, &mut 0);
        let data: Vec<&[u8]> = entries.iter().map(|e| e.data.as_slice()).collect();
        assert_eq!(data, vec![&b"a\n"[..], &b"bb\n"[..]]);
        assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn aggregation_packs_whole_records_up_to_the_limit() {
        // Three records of 400 KiB: two fit in 1,000 KiB, the third starts a new one.
        let lines = vec![vec![b'x'; 400 * 1024]; 3];
        let entries = packed(&batch(&records(&lines)), false, true, &mut 0);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].data.len(), 2 * (400 * 1024 + 1));
        assert_eq!((entries[0].index, entries[1].index), (0, 2));
        assert!(entries.iter().all(|e| e.data.len() <= FIREHOSE_RECORD_LIMIT && e.data.ends_with(b"\n")));
    }

    #[test]
    fn an_envelope_too_large_is_cut_to_fit_and_counted() {
        let lines = vec![vec![b'y'; FIREHOSE_RECORD_LIMIT - 1]];
        let mut cut = 0;
        let entries = packed(&batch(&records(&lines)), true, true, &mut cut);
        assert_eq!(cut, 1);
        assert!(entries[0].data.len() <= FIREHOSE_RECORD_LIMIT);
        let v: serde_json::Value = serde_json::from_slice(&entries[0].data).unwrap();
        assert!(v["data"].as_str().unwrap().len() < FIREHOSE_RECORD_LIMIT - 1);
    }
}
