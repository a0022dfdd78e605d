//! `[metrics.cloudwatch]`: the flows' counters sent with PutMetricData every interval, under
//! the Kinesis Agent's metric names (dashboards and alarms built for it keep working), one
//! `Flow` dimension per flow, plus the flow's lag. Counts are the change since the last call
//! that succeeded: a failed call is logged (once per cause) and its counts go with the next.

use std::collections::HashMap;

use aws_sdk_cloudwatch::{
    Client,
    types::{Dimension, MetricDatum, StandardUnit},
};

use crate::{
    config::CloudWatchConfig,
    metrics::{FlowCounters, Shared},
};

/// PutMetricData takes at most 1,000 data per call.
const PER_CALL: usize = 1000;

/// Runs until `stop` fires, then sends what changed once more (a stopping collector's last
/// interval is not lost) and returns.
pub async fn run(config: CloudWatchConfig, shared: Shared, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let client = Client::new(&crate::aws::sdk_config(&config.access).await);
    let mut sent: HashMap<String, FlowCounters> = HashMap::new();
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let snapshot = shared.lock().expect("metrics snapshot").clone();
        if let Some(snapshot) = snapshot {
            let data = data(&snapshot.flows, &sent);
            match put(&client, &config.namespace, data).await {
                Ok(()) => {
                    sent = snapshot.flows.iter().map(|f| (f.name.clone(), f.counters)).collect();
                    if last_error.take().is_some() {
                        tracing::info!(namespace = %config.namespace, "CloudWatch accepts metrics again");
                    }
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(namespace = %config.namespace, "CloudWatch PutMetricData failed; the counts go with the next call: {e}");
                        last_error = Some(e);
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

fn data(flows: &[crate::metrics::FlowStatus], sent: &HashMap<String, FlowCounters>) -> Vec<MetricDatum> {
    let mut data = Vec::new();
    for f in flows {
        let before = sent.get(&f.name).copied().unwrap_or_default();
        let now = f.counters;
        let delta = |get: fn(&FlowCounters) -> u64| get(&now).saturating_sub(get(&before)) as f64;
        let dimension = Dimension::builder().name("Flow").value(&f.name).build();
        for (name, value, unit) in [
            ("BytesSent", delta(|c| c.bytes_sent), StandardUnit::Bytes),
            ("RecordsSent", delta(|c| c.records_sent), StandardUnit::Count),
            ("RecordSendAttempts", delta(|c| c.records_sent + c.records_retried), StandardUnit::Count),
            ("RecordSendErrors", delta(|c| c.records_retried), StandardUnit::Count),
            ("ServiceErrors", delta(|c| c.batches_failed), StandardUnit::Count),
            ("LagBytes", f.lag_bytes as f64, StandardUnit::Bytes),
        ] {
            data.push(
                MetricDatum::builder().metric_name(name).dimensions(dimension.clone()).value(value).unit(unit).build(),
            );
        }
    }
    data
}

async fn put(client: &Client, namespace: &str, data: Vec<MetricDatum>) -> Result<(), String> {
    for chunk in data.chunks(PER_CALL) {
        client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| crate::aws::describe(&e))?;
    }
    Ok(())
}
