use http::StatusCode;

/// What an upstream status means to backstop.
///
/// One classifier shared by the error mapping, the retry policy and the
/// readiness window, so the three never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusClass {
    /// 1xx or 2xx: passed through.
    Success,
    /// 3xx: passed through, never retried.
    Redirect,
    /// 4xx other than 408, 409 and 429: passed through, never retried.
    ClientError,
    /// 409 or 429: the upstream asks to come back later; retried by policy,
    /// passed through once the policy gives up.
    Throttled,
    /// 5xx (529 included) or 408: the upstream failed; retried by policy,
    /// answered as 502 `upstream_failure`.
    ServerError,
}

impl StatusClass {
    /// Classifies an upstream status.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            408 | 500..=599 => Self::ServerError,
            409 | 429 => Self::Throttled,
            400..=499 => Self::ClientError,
            300..=399 => Self::Redirect,
            _ => Self::Success,
        }
    }

    /// Whether the default retry policy retries this class.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::ServerError)
    }

    /// Whether the client sees a generated 502 instead of the upstream's
    /// response.
    pub fn is_bad_gateway(self) -> bool {
        self == Self::ServerError
    }

    /// Whether this counts as an upstream failure for readiness (5xx, 529,
    /// 408; not other 4xx, not 429).
    pub fn is_upstream_failure(self) -> bool {
        self == Self::ServerError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            (200, StatusClass::Success),
            (204, StatusClass::Success),
            (301, StatusClass::Redirect),
            (400, StatusClass::ClientError),
            (401, StatusClass::ClientError),
            (404, StatusClass::ClientError),
            (408, StatusClass::ServerError),
            (409, StatusClass::Throttled),
            (413, StatusClass::ClientError),
            (429, StatusClass::Throttled),
            (500, StatusClass::ServerError),
            (503, StatusClass::ServerError),
            (529, StatusClass::ServerError),
        ];
        for (code, class) in cases {
            let got = StatusClass::of(StatusCode::from_u16(code).unwrap());
            assert_eq!(got, class, "{code}");
        }
        assert!(StatusClass::Throttled.is_retryable());
        assert!(!StatusClass::Throttled.is_bad_gateway());
        assert!(!StatusClass::ClientError.is_retryable());
        assert!(StatusClass::ServerError.is_upstream_failure());
    }
}
