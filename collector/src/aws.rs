//! What the AWS clients share (the sinks, configs from SSM, CloudWatch metrics): the SDK
//! configuration from aws-config's default chain with region, endpoint and assumed role on
//! top; errors as the operator needs them; and a runtime of their own to drive the SDK from
//! the daemon's synchronous calls.

use std::time::Duration;

use anyhow::Context as _;
use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use crate::config::{AwsAccess, DEFAULT_REQUEST_TIMEOUT};
use crate::sink::batch::CallFailed;

/// The SDK's own retries are off: the sinks retry per record (see batch.rs).
pub async fn sdk_config(access: &AwsAccess) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(access.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT))
                .build(),
        );
    if let Some(region) = &access.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &access.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let base = loader.load().await;
    let Some(role) = &access.role_arn else { return base };
    let mut assume = aws_config::sts::AssumeRoleProvider::builder(role).session_name("collector").configure(&base);
    if let Some(id) = &access.external_id {
        assume = assume.external_id(id);
    }
    let provider = assume.build().await;
    base.to_builder().credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(provider)).build()
}

/// A runtime for one sink, with one long-lived worker thread: requests run there as tasks
/// (`spawn`), however many are out, and no thread is made per call.
pub struct SinkRuntime(Option<tokio::runtime::Runtime>);

impl SinkRuntime {
    pub fn new() -> anyhow::Result<SinkRuntime> {
        Ok(SinkRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("collector-sink")
                .enable_all()
                .build()
                .context("tokio runtime")?,
        )))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("runtime until dropped")
    }

    /// Runs `work` on the worker; its result goes where it says.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime().spawn(work);
    }

    /// Runs `work` to its end (start-up checks). On a scoped thread: the caller may be
    /// inside another runtime, where blocking on one is not allowed.
    pub fn block_on<T: Send>(&self, work: impl Future<Output = T> + Send) -> anyhow::Result<T> {
        let runtime = self.runtime();
        std::thread::scope(|s| s.spawn(|| runtime.block_on(work)).join())
            .map_err(|_| anyhow::anyhow!("the sink's runtime panicked"))
    }
}

impl Drop for SinkRuntime {
    fn drop(&mut self) {
        // Dropped from inside the daemon's runtime, where a runtime may not block to shut down.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Logs a sink's start-up check of its destination: `what` reachable with `detail`, or not
/// usable yet (the collector starts either way; records wait on disk until it is).
pub fn report_destination(what: &str, name: &str, checked: anyhow::Result<Result<String, String>>) {
    match checked {
        Ok(Ok(detail)) => tracing::info!(destination = %name, %detail, "{what} reachable"),
        Ok(Err(e)) => tracing::error!(destination = %name, "{what} not usable yet (records wait on disk): {e}"),
        Err(e) => tracing::error!(destination = %name, "checking the {what}: {e:#}"),
    }
}

/// A failed call: its AWS error code and message, or the transport failure with its causes,
/// and whether trying again can help.
pub fn call_failed<E, R>(e: &SdkError<E, R>) -> CallFailed
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    CallFailed { what: describe(e), retryable: is_retryable(e) }
}

pub fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!("{}: {}", err.code().unwrap_or("ServiceError"), err.message().unwrap_or("(no message)"))
        }
        other => {
            // The source chain says what really failed (connection refused, no credentials...).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

pub fn is_retryable<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            matches!(
                code,
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "LimitExceededException"
                    | "KMSThrottlingException"
                    | "InternalFailure"
                    | "InternalFailureException"
                    | "ServiceUnavailable"
                    | "ServiceUnavailableException"
            ) || code.is_empty()
        }
        // Construction failures (no credentials resolved, bad request) need the operator.
        _ => false,
    }
}

/// Logs retried failures when their cause (the AWS error code, or the transport failure)
/// changes: lasting throttling is one line, not one per call.
#[derive(Default)]
pub struct RetryLog {
    last_cause: Option<String>,
}

impl RetryLog {
    pub fn note(&mut self, destination: &str, what: &str) {
        let cause = what.split(':').next().unwrap_or_default();
        if self.last_cause.as_deref() != Some(cause) {
            tracing::warn!(%destination, "{what}; retrying with backoff");
            self.last_cause = Some(cause.to_owned());
        }
    }

    /// After a delivery that went through: says so once if retries had been logged.
    pub fn succeeded(&mut self, destination: &str) {
        if self.last_cause.take().is_some() {
            tracing::info!(%destination, "records accepted again");
        }
    }

    /// A delivery's outcomes for the daemon (one per file), with its retries logged.
    pub fn outcomes(
        &mut self,
        destination: &str,
        notes: &[String],
        outcomes: Vec<crate::sink::batch::Outcome>,
    ) -> Vec<Result<(), crate::sink::Refused>> {
        for note in notes {
            self.note(destination, note);
        }
        if outcomes.iter().all(Result::is_ok) {
            self.succeeded(destination);
        }
        outcomes
    }
}
