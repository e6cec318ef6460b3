//! YouTube URL → 11-character video id, for every link form people paste; and playlist
//! links (`/playlist?list=…`) → the playlist id.

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
    let (url, host) = web_url(input)?;
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

/// The playlist id of a playlist page link (`youtube.com/playlist?list=PL…`). A watch link
/// that also names a list (`watch?v=…&list=…`) is the one video, as YouTube's share links
/// mean; [`parse_video_id`] takes those.
pub fn parse_playlist_id(input: &str) -> Option<String> {
    let (url, host) = web_url(input)?;
    let mut segments = url.path_segments()?.filter(|s| !s.is_empty());
    if !HOSTS.contains(&host.as_str()) || segments.next() != Some("playlist") {
        return None;
    }
    let id = url
        .query_pairs()
        .find(|(k, _)| k == "list")
        .map(|(_, v)| v.into_owned())?;
    is_playlist_id(&id).then_some(id)
}

/// `input` as an http(s) URL (scheme optional, as people paste them) and its lowercase host.
fn web_url(input: &str) -> Option<(Url, String)> {
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
    Some((url, host))
}

/// The canonical watch URL stored in entries, so clients never echo arbitrary user URLs.
pub fn canonical_url(video_id: &str) -> String {
    format!("https://www.youtube.com/watch?v={video_id}")
}

/// Playlist ids are 13-64 characters of the URL-safe alphabet (`PL` + 32 is the common form,
/// `OLAK5uy_…` albums are longer).
fn is_playlist_id(s: &str) -> bool {
    (13..=64).contains(&s.len()) && url_safe(s)
}

/// An 11-character id of YouTube's URL-safe alphabet.
pub fn is_video_id(s: &str) -> bool {
    s.len() == 11 && url_safe(s)
}

/// Only YouTube's id alphabet: letters, digits, `-`, `_`.
fn url_safe(s: &str) -> bool {
    s.bytes()
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
    fn playlist_links_give_the_list_and_watch_links_stay_videos() {
        let list = Some("PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI".to_string());
        for url in [
            "https://www.youtube.com/playlist?list=PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI",
            "youtube.com/playlist?list=PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI&si=x",
            "https://music.youtube.com/playlist?list=PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI",
        ] {
            assert_eq!(parse_playlist_id(url), list, "{url}");
        }
        for url in [
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI",
            "https://www.youtube.com/playlist?list=short",
            "https://www.youtube.com/playlist?list=PLFgquLnL59alCl%202TQvOiD5Vgm1hCaGSI",
            "https://evil.example/playlist?list=PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI",
            "https://www.youtube.com/playlist",
        ] {
            assert_eq!(parse_playlist_id(url), None, "{url}");
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
