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
        let client = self.client();
        Self::runtime().block_on(async {
            let shards = client.list_shards().stream_name(&self.stream).send().await.expect("ListShards");
            let mut out = Vec::new();
            for shard in shards.shards() {
                let mut iterator = client
                    .get_shard_iterator()
                    .stream_name(&self.stream)
                    .shard_id(shard.shard_id())
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .expect("GetShardIterator")
                    .shard_iterator
                    .expect("iterator");
                loop {
                    let page =
                        client.get_records().shard_iterator(&iterator).limit(10_000).send().await.expect("GetRecords");
                    for r in page.records() {
                        let v: Value = serde_json::from_slice(r.data().as_ref()).expect("an envelope");
                        out.push(v);
                    }
                    // An open shard answers an empty page once it is read to its end.
                    if page.records().is_empty() {
                        break;
                    }
                    match page.next_shard_iterator() {
                        Some(next) => iterator = next.to_owned(),
                        None => break,
                    }
                }
            }
            out
        })
    }

    /// Waits until the stream holds at least `count` records (or two minutes pass).
    pub fn wait_for_records(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let records = self.records();
            if records.len() >= count || Instant::now() > deadline {
                std::thread::sleep(Duration::from_secs(1));
                return self.records();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
