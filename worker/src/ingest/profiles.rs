//! Real browser header sets. A session (one Twitch connection, one YouTube poller) picks
//! one and keeps it, so the User-Agent and the headers that go with it always match.

/// One browser's request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserProfile {
    pub name: &'static str,
    pub user_agent: &'static str,
    pub accept_language: &'static str,
    /// Client hints only Chromium browsers send: (`sec-ch-ua`, `sec-ch-ua-platform`).
    pub client_hints: Option<(&'static str, &'static str)>,
}

impl BrowserProfile {
    /// Headers for a page or API request, in the order the browser sends them.
    pub fn headers(&self, accept: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut h = Vec::with_capacity(6);
        if let Some((ua, platform)) = self.client_hints {
            h.push(("sec-ch-ua", ua));
            h.push(("sec-ch-ua-mobile", "?0"));
            h.push(("sec-ch-ua-platform", platform));
        }
        h.push(("user-agent", self.user_agent));
        h.push(("accept", accept));
        h.push(("accept-language", self.accept_language));
        h.push(("accept-encoding", "gzip"));
        h
    }
}

/// The pool sessions draw from.
pub const PROFILES: &[BrowserProfile] = &[
    BrowserProfile {
        name: "chrome-windows",
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        accept_language: "en-US,en;q=0.9",
        client_hints: Some((
            "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
            "\"Windows\"",
        )),
    },
    BrowserProfile {
        name: "chrome-macos",
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
        accept_language: "en-GB,en-US;q=0.9,en;q=0.8",
        client_hints: Some((
            "\"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"",
            "\"macOS\"",
        )),
    },
    BrowserProfile {
        name: "edge-windows",
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        accept_language: "en-US,en;q=0.9,de;q=0.8",
        client_hints: Some((
            "\"Microsoft Edge\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
            "\"Windows\"",
        )),
    },
    BrowserProfile {
        name: "firefox-windows",
        user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        accept_language: "en-US,en;q=0.5",
        client_hints: None,
    },
    BrowserProfile {
        name: "firefox-linux",
        user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        accept_language: "en-US,en;q=0.5",
        client_hints: None,
    },
    BrowserProfile {
        name: "safari-macos",
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
        accept_language: "en-US,en;q=0.9",
        client_hints: None,
    },
];

/// A profile for a new session.
pub fn pick() -> &'static BrowserProfile {
    &PROFILES[rand::random_range(0..PROFILES.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chromium_profiles_send_client_hints_and_others_do_not() {
        for p in PROFILES {
            let chromium = p.user_agent.contains("Chrome/");
            assert_eq!(chromium, p.client_hints.is_some(), "{}", p.name);
            let names: Vec<_> = p.headers("*/*").iter().map(|(n, _)| *n).collect();
            assert!(names.contains(&"user-agent") && names.contains(&"accept-language"));
        }
    }
}
