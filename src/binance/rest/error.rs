//! [`RestError`]: what a REST call can fail with, and whether a retry can
//! help or the daemon must stop.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("request to {url} failed: {source} (retrying may help)")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status} with Binance code {code:?}: {message}")]
    Status {
        url: String,
        status: u16,
        code: Option<i64>,
        message: String,
    },
    /// 429 (too much weight), 418 (IP banned) or 403 (Binance's web
    /// application firewall, which blocks for rate as well as for security:
    /// reference section 6): every caller of this client waits until
    /// `retry_after` has passed (without it, a back-off that grows from one
    /// weight window), then one request probes.
    #[error("{url} answered HTTP {status} (rate limited, retry after {retry_after:?}) with Binance code {code:?}")]
    RateLimited {
        url: String,
        status: u16,
        code: Option<i64>,
        retry_after: Option<Duration>,
    },
    #[error("{url} answered a body that is not the expected JSON: {reason}")]
    Body { url: String, reason: String },
    /// The caller's deadline would pass while waiting for the weight budget,
    /// a rate-limit back-off or a free in-flight slot, so the request was
    /// not sent.
    #[error("{url} not called: waiting {wait:?} for the weight budget, a back-off or a request in flight would pass the deadline")]
    OutOfTime { url: String, wait: Duration },
    /// The request was sent, but its answer did not come before the
    /// caller's deadline (its timeout was cut to it): REST is behind, not
    /// unreachable.
    #[error("{url} did not answer before the deadline")]
    PastDeadline { url: String },
    /// HTTP 451 (a restricted location): Binance refuses this host's
    /// region. Never retried, and fatal ([`RestError::is_fatal`]): nothing
    /// will fill a gap from here. (A 403 is [`RestError::RateLimited`]: the
    /// firewall also blocks for rate, and stopping the streams for it would
    /// lose what they deliver.)
    #[error("{url} answered HTTP {status}: Binance refuses requests from this host or region ({}); retrying will not help: {message}", refusal(.status))]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer was larger than the client's body cap: a broken or
    /// hostile server. Not read, not retried.
    #[error("{url} answered a body larger than {limit_bytes} bytes; not read")]
    BodyTooLarge { url: String, limit_bytes: usize },
    /// The caller's [`RetryPolicy::cancel`] fired (its deadline passed):
    /// the call in progress was dropped. Not retried by the helpers.
    #[error("the caller stopped waiting for REST (its deadline passed)")]
    Cancelled,
}

/// What a refusing status means, for [`RestError::Refused`]'s message.
fn refusal(status: &u16) -> &'static str {
    match status {
        451 => "451: service unavailable from a restricted location",
        _ => "refused",
    }
}

impl RestError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Transport { .. }
            | RestError::Body { .. }
            | RestError::RateLimited { .. }
            | RestError::OutOfTime { .. }
            | RestError::PastDeadline { .. } => true,
            // Binance's side (5xx), a timeout (408), or a code the
            // reference says to retry whatever the status: -1000 unknown,
            // -1001 disconnected, -1007 timeout, -1008 server busy.
            RestError::Status { status, code, .. } => {
                *status >= 500
                    || *status == 408
                    || matches!(code, Some(-1000 | -1001 | -1007 | -1008))
            }
            RestError::Refused { .. } | RestError::BodyTooLarge { .. } | RestError::Cancelled => {
                false
            }
        }
    }

    /// Whether the daemon cannot go on: Binance refuses this host's region
    /// (451), so no REST call will ever succeed from here. The runtime
    /// stops with this error's message.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RestError::Refused { .. })
    }

    /// The Binance error code of the answer, if it carried one.
    pub fn binance_code(&self) -> Option<i64> {
        match self {
            RestError::Status { code, .. } | RestError::RateLimited { code, .. } => *code,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let status = |status: u16, code: Option<i64>| RestError::Status {
            url: "u".into(),
            status,
            code,
            message: String::new(),
        };
        assert!(status(503, None).is_retryable());
        assert!(!status(400, Some(-1121)).is_retryable());
        assert_eq!(status(400, Some(-1121)).binance_code(), Some(-1121));
        assert!(!status(400, Some(-1100)).is_retryable());
        assert!(status(408, None).is_retryable());
        for code in [-1000, -1001, -1007, -1008] {
            assert!(status(400, Some(code)).is_retryable(), "{code}");
        }
        let limited = RestError::RateLimited {
            url: "u".into(),
            status: 429,
            code: Some(-1003),
            retry_after: None,
        };
        assert!(limited.is_retryable());
        assert!(RestError::Body {
            url: "u".into(),
            reason: "r".into()
        }
        .is_retryable());
    }
}
