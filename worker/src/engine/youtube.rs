//! YouTube URL → 11-character video id, for every link form people paste.

use lockstep_shared::protocol::bounds::MAX_URL_BYTES;
use url::Url;

/// Hosts that serve YouTube watch pages or players.
const HOSTS: &[&str] = &[
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
];

/// Path prefixes whose next segment is the video id.
const ID_PATHS: &[&str] = &["shorts", "embed", "live", "v", "e"];

/// The video id in `input`, or `None` if it is not a YouTube video link.
pub fn parse_video_id(input: &str) -> Option<String> {
    let input = input.trim();
    if input.is_empty() || input.len() > MAX_URL_BYTES {
        return None;
    }
    let url = if input.contains("://") {
        Url::parse(input).ok()?
    } else {
        Url::parse(&format!("https://{input}")).ok()?
    };
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let mut segments = url.path_segments()?.filter(|s| !s.is_empty());
    let candidate = if host == "youtu.be" || host == "www.youtu.be" {
        segments.next().map(str::to_owned)
    } else if HOSTS.contains(&host.as_str()) {
        match segments.next() {
            Some("watch") => url
                .query_pairs()
                .find(|(k, _)| k == "v")
                .map(|(_, v)| v.into_owned()),
            Some(prefix) if ID_PATHS.contains(&prefix) => segments.next().map(str::to_owned),
            _ => None,
        }
    } else {
        None
    }?;
    is_video_id(&candidate).then_some(candidate)
}

/// The canonical watch URL stored in entries, so clients never echo arbitrary user URLs.
pub fn canonical_url(video_id: &str) -> String {
    format!("https://www.youtube.com/watch?v={video_id}")
}

fn is_video_id(s: &str) -> bool {
    s.len() == 11
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_common_form() {
        let id = Some("dQw4w9WgXcQ".to_string());
        for url in [
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "http://youtube.com/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/watch?feature=share&v=dQw4w9WgXcQ&t=42s",
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PL123&index=2",
            "https://m.youtube.com/watch?v=dQw4w9WgXcQ",
            "https://music.youtube.com/watch?v=dQw4w9WgXcQ&si=abc",
            "https://youtu.be/dQw4w9WgXcQ",
            "https://youtu.be/dQw4w9WgXcQ?t=10",
            "youtu.be/dQw4w9WgXcQ",
            "www.youtube.com/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/shorts/dQw4w9WgXcQ",
            "https://youtube.com/shorts/dQw4w9WgXcQ?feature=share",
            "https://www.youtube.com/embed/dQw4w9WgXcQ?autoplay=1",
            "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ",
            "https://www.youtube.com/live/dQw4w9WgXcQ?si=xyz",
            "https://www.youtube.com/v/dQw4w9WgXcQ",
            "  https://WWW.YOUTUBE.COM/watch?v=dQw4w9WgXcQ  ",
        ] {
            assert_eq!(parse_video_id(url), id, "{url}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for url in [
            "",
            "dQw4w9WgXcQ",
            "https://vimeo.com/123456",
            "https://www.youtube.com/watch?v=short",
            "https://www.youtube.com/watch?v=dQw4w9WgXcQX",
            "https://www.youtube.com/watch",
            "https://www.youtube.com/channel/UC38IQsAvIsxxjztdMZQtwHA",
            "https://youtu.be/",
            "ftp://youtu.be/dQw4w9WgXcQ",
            "https://evil.example/watch?v=dQw4w9WgXcQ",
            "https://youtube.com.evil.example/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/watch?v=dQw4w9WgX%20Q",
            "javascript:alert(1)",
        ] {
            assert_eq!(parse_video_id(url), None, "{url}");
        }
    }

    #[test]
    fn canonical_url_round_trips() {
        assert_eq!(
            parse_video_id(&canonical_url("abcdefghijk")).as_deref(),
            Some("abcdefghijk")
        );
    }
}
