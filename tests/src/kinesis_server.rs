//! A real Kinesis Data Streams server for the tests: kinesis-mock (npm kinesis-local, put
//! in place by `cargo xtask setup`; started where `servers` says), and a client that reads
//! every shard back.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::{Client, types::ShardIteratorType};
use serde_json::Value;

use crate::servers::{self, Server};

pub struct KinesisServer {
    _server: Server,
    pub port: u16,
    pub stream: String,
}

impl KinesisServer {
    /// Starts the server on `port` (of the servers' host) with `stream` (2 shards) and waits
    /// until the stream is ACTIVE.
    pub fn start_on(port: u16, stream: &str) -> KinesisServer {
        let server = KinesisServer { _server: Server::kinesis_local(port, stream), port, stream: stream.to_owned() };
        server.wait_active();
        server
    }

    pub fn start(stream: &str) -> KinesisServer {
        KinesisServer::start_on(servers::free_port(), stream)
    }

    pub fn endpoint(&self) -> String {
        servers::endpoint(self.port)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    fn client(&self) -> Client {
        let endpoint = self.endpoint();
        Self::runtime().block_on(async move {
            let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "tests"))
                // The test's reader waits for a slow server (kinesis-mock in a TCG guest sent
                // a page's body at under a byte a second for seconds at a time).
                .stalled_stream_protection(
                    aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
                )
                .load()
                .await;
            Client::from_conf(aws_sdk_kinesis::config::Builder::from(&base).endpoint_url(endpoint).build())
        })
    }

    /// Creates another stream (2 shards) and waits until it is ACTIVE.
    pub fn create_stream(&mut self, stream: &str) {
        let client = self.client();
        Self::runtime()
            .block_on(client.create_stream().stream_name(stream).shard_count(2).send())
            .expect("CreateStream");
        self.stream = stream.to_owned();
        self.wait_active();
    }

    fn wait_active(&self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = Self::runtime().block_on(client.describe_stream_summary().stream_name(&self.stream).send());
            if let Ok(out) = status
                && out.stream_description_summary().is_some_and(|d| d.stream_status().as_str() == "ACTIVE")
            {
                return;
            }
            assert!(Instant::now() < deadline, "stream {} never became ACTIVE", self.stream);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every record in every shard, shard by shard in sequence order, as JSON values (the
    /// records are the collector's `envelope = "json"`).
    pub fn records(&self) -> Vec<Value> {
        let mut reader = Reader::default();
        self.read_more(&mut reader);
        reader.records()
    }

    /// Reads what each shard got since `reader` last read it. Pages of at most 1,000
    /// records: kinesis-mock builds a whole page before sending it, and in a TCG guest a
    /// 10,000-record page (5 MB) took long enough to starve the collector's own calls.
    fn read_more(&self, reader: &mut Reader) {
        let client = self.client();
        Self::runtime().block_on(async {
            if reader.shards.is_empty() {
                let shards = client.list_shards().stream_name(&self.stream).send().await.expect("ListShards");
                for shard in shards.shards() {
                    let iterator = client
                        .get_shard_iterator()
                        .stream_name(&self.stream)
                        .shard_id(shard.shard_id())
                        .shard_iterator_type(ShardIteratorType::TrimHorizon)
                        .send()
                        .await
                        .expect("GetShardIterator")
                        .shard_iterator
                        .expect("iterator");
                    reader.shards.push((Some(iterator), Vec::new()));
                }
            }
            for (iterator, out) in &mut reader.shards {
                while let Some(current) = iterator.clone() {
                    let page =
                        client.get_records().shard_iterator(&current).limit(1_000).send().await.expect("GetRecords");
                    for r in page.records() {
                        out.push(serde_json::from_slice(r.data().as_ref()).expect("an envelope"));
                    }
                    // A closed shard has no next iterator; an open one answers an empty
                    // page once it is read to its end (read on from there next time).
                    let empty = page.records().is_empty();
                    *iterator = page.next_shard_iterator().map(str::to_owned);
                    if empty {
                        break;
                    }
                }
            }
        })
    }

    /// Waits until the stream holds at least `count` records (or two minutes pass).
    pub fn wait_for_records(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut reader = Reader::default();
        loop {
            self.read_more(&mut reader);
            if reader.len() >= count || Instant::now() > deadline {
                // Records that were on their way (or duplicates) would show now.
                std::thread::sleep(Duration::from_secs(1));
                self.read_more(&mut reader);
                return reader.records();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Where reading each shard has got to, and what it read.
#[derive(Default)]
struct Reader {
    shards: Vec<(Option<String>, Vec<Value>)>,
}

impl Reader {
    fn len(&self) -> usize {
        self.shards.iter().map(|(_, r)| r.len()).sum()
    }

    /// Shard by shard, each in sequence order.
    fn records(self) -> Vec<Value> {
        self.shards.into_iter().flat_map(|(_, r)| r).collect()
    }
}

/// What a consumer of the stream gets: every Kinesis record read with boto3 and unpacked
/// with AWS's deaggregator (PyPI aws-kinesis-agg, as Lambda consumers use it), where the
/// servers run.
pub struct Consumed {
    /// Kinesis records in the stream, and how many of them were KPL aggregated records.
    pub kinesis_records: usize,
    pub aggregated: usize,
    /// The user records, shard by shard in order, as JSON envelopes.
    pub records: Vec<Value>,
    /// Per user record: its Kinesis record's sequence number and its partition key.
    pub carried_by: Vec<(String, String)>,
}

impl KinesisServer {
    pub fn consumed(&self) -> Consumed {
        consume(self.port, &self.stream)
    }

    /// Waits until a consumer gets at least `count` user records (or two minutes pass).
    pub fn wait_for_consumed(&self, count: usize) -> Consumed {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let consumed = self.consumed();
            if consumed.records.len() >= count || Instant::now() > deadline {
                // Records that were on their way (or duplicates) would show now.
                std::thread::sleep(Duration::from_secs(1));
                return self.consumed();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// What a consumer of `stream` on the server at `port` (kinesis-mock or moto) gets.
pub fn consume(port: u16, stream: &str) -> Consumed {
    let script = format!(
        "import base64, json, boto3\n\
         from aws_kinesis_agg.deaggregator import iter_deaggregate_records\n\
         k = boto3.client('kinesis', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1',\n\
             aws_access_key_id='test', aws_secret_access_key='test')\n\
         for shard in k.list_shards(StreamName={stream:?})['Shards']:\n\
         \x20   it = k.get_shard_iterator(StreamName={stream:?}, ShardId=shard['ShardId'],\n\
         \x20       ShardIteratorType='TRIM_HORIZON')['ShardIterator']\n\
         \x20   while it:\n\
         \x20       page = k.get_records(ShardIterator=it, Limit=1000)\n\
         \x20       for r in page['Records']:\n\
         \x20           print(json.dumps({{'kinesis': r['SequenceNumber']}}))\n\
         \x20           for u in iter_deaggregate_records([r], data_format='Boto3'):\n\
         \x20               u = u['kinesis']\n\
         \x20               data = base64.b64decode(u['data']) if u.get('aggregated') else u['data']\n\
         \x20               print(json.dumps({{'aggregated': bool(u.get('aggregated')), 'key': u['partitionKey'],\n\
         \x20                   'seq': u['sequenceNumber'], 'data': data.decode()}}))\n\
         \x20       it = page.get('NextShardIterator')\n\
         \x20       if not page['Records']:\n\
         \x20           break\n"
    );
    let out = servers::python(&script);
    assert!(out.status.success(), "the consumer failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut consumed = Consumed { kinesis_records: 0, aggregated: 0, records: Vec::new(), carried_by: Vec::new() };
    let mut this_one_aggregated = false;
    for line in String::from_utf8(out.stdout).expect("utf-8 output").lines() {
        let v: Value = serde_json::from_str(line).expect("a line of the consumer");
        if v.get("kinesis").is_some() {
            consumed.kinesis_records += 1;
            this_one_aggregated = false;
            continue;
        }
        if v["aggregated"] == true && !this_one_aggregated {
            consumed.aggregated += 1;
            this_one_aggregated = true;
        }
        let data = v["data"].as_str().expect("data");
        consumed.records.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("not an envelope ({e}): {data:?}")));
        consumed.carried_by.push((v["seq"].as_str().unwrap().to_owned(), v["key"].as_str().unwrap().to_owned()));
    }
    consumed
}
