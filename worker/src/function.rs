//! Function registrations: a name, a handler, and per-function options.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::job::{Job, JobError, JobOutput};

/// Errors returned by init hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Runs one job. Implemented for every `Fn(Job) -> impl Future<Output = Result<JobOutput,
/// JobError>>` that is `Send + Sync + 'static`, so plain async fns and closures work.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, job: Job) -> BoxFuture<'static, Result<JobOutput, JobError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JobOutput, JobError>> + Send + 'static,
{
    fn call(&self, job: Job) -> BoxFuture<'static, Result<JobOutput, JobError>> {
        Box::pin(self(job))
    }
}

/// A function the worker serves.
#[derive(Clone)]
pub struct Function {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) timeout: Option<Duration>,
    /// Whether the timeout is announced to the server with CAN_DO_TIMEOUT.
    pub(crate) announce_timeout: bool,
    pub(crate) next: Option<String>,
}

impl Function {
    pub fn new(name: impl AsRef<str>, handler: impl Handler) -> Function {
        Function {
            name: Arc::from(name.as_ref()),
            handler: Arc::new(handler),
            timeout: None,
            announce_timeout: false,
            next: None,
        }
    }

    /// Registers with CAN_DO_TIMEOUT: the server fails a job still running after `timeout` (sent
    /// in milliseconds, as every Gearman library does; gearfleet-broker and gearmand raise values
    /// under one second to one second), and the SDK cancels the job's token and stops waiting for
    /// the handler once `timeout` has passed.
    pub fn timeout(mut self, timeout: Duration) -> Function {
        self.timeout = Some(timeout);
        self.announce_timeout = true;
        self
    }

    /// Enforces `timeout` in the SDK only and registers with plain CAN_DO. Use it with
    /// gearmand, which reads CAN_DO_TIMEOUT as milliseconds (1s minimum) and, on expiry,
    /// silently re-queues the job while the worker keeps running it.
    pub fn local_timeout(mut self, timeout: Duration) -> Function {
        self.timeout = Some(timeout);
        self.announce_timeout = false;
        self
    }

    /// Passes every successful output on to `function` as a background job, unless the
    /// handler's [`JobOutput::next`] names another one.
    pub fn next(mut self, function: impl Into<String>) -> Function {
        self.next = Some(function.into());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value sent in CAN_DO_TIMEOUT: milliseconds, at least 1 (0 would mean no timeout);
    /// `None` for plain CAN_DO.
    pub(crate) fn timeout_ms(&self) -> Option<u64> {
        self.timeout.filter(|_| self.announce_timeout).map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
    }
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn noop(_: Job) -> Result<JobOutput, JobError> {
        Ok(JobOutput::default())
    }

    #[test]
    fn timeout_is_announced_in_milliseconds() {
        let f = Function::new("f", noop);
        assert_eq!(f.timeout_ms(), None);
        assert_eq!(f.clone().timeout(Duration::from_micros(10)).timeout_ms(), Some(1));
        assert_eq!(f.clone().timeout(Duration::from_millis(1500)).timeout_ms(), Some(1500));
        assert_eq!(f.clone().timeout(Duration::from_secs(30)).timeout_ms(), Some(30_000));
        let local = f.local_timeout(Duration::from_secs(30));
        assert_eq!((local.timeout, local.timeout_ms()), (Some(Duration::from_secs(30)), None));
    }
}
