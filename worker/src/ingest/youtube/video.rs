//! A queued video's title and duration, read from its watch page's
//! `ytInitialPlayerResponse` (`videoDetails.title`, `videoDetails.lengthSeconds`), and
//! whether an embedded player can play it at all. Only definite answers mark a video
//! unavailable: `playabilityStatus.status` `ERROR` (removed, private, never existed) or
//! `playableInEmbed: false`. Anything else without details (a sign-in or bot check, a
//! region block of the server's own address) is a failed lookup, tried again later, so a
//! throttled node never skips good videos.

use lockstep_shared::protocol::bounds::MAX_TITLE_CHARS;
use lockstep_shared::protocol::nul;
use serde_json::Value;

use super::page::{embedded_json, PageError};
use crate::engine::VideoMeta;

/// Why an embedded player cannot play a video whose details are known.
const NOT_EMBEDDABLE: &str = "the uploader does not allow playing it on other sites";

/// Reads `video_id`'s watch page.
pub fn parse_video(html: &str, video_id: &str) -> Result<VideoMeta, PageError> {
    let player = embedded_json(html, "ytInitialPlayerResponse")
        .ok_or_else(|| PageError("no ytInitialPlayerResponse".into()))?;
    let status = &player["playabilityStatus"];
    let details = &player["videoDetails"];
    if !details.is_object() {
        return match status["status"].as_str() {
            Some("ERROR") => Ok(VideoMeta {
                unavailable: Some(clip(
                    status["reason"].as_str().unwrap_or("Video unavailable"),
                    MAX_TITLE_CHARS,
                )),
                ..VideoMeta::default()
            }),
            Some(other) => Err(PageError(format!(
                "no videoDetails; playability {other}: {}",
                clip(status["reason"].as_str().unwrap_or(""), MAX_TITLE_CHARS)
            ))),
            None => Err(PageError(
                "neither videoDetails nor playabilityStatus".into(),
            )),
        };
    }
    if details["videoId"].as_str() != Some(video_id) {
        return Err(PageError(format!(
            "the page is for {:?}, not {video_id}",
            details["videoId"].as_str().unwrap_or("no video")
        )));
    }
    let live =
        details["isLive"].as_bool() == Some(true) || details["isUpcoming"].as_bool() == Some(true);
    let duration_ms = length_ms(&details["lengthSeconds"]).filter(|_| !live);
    let title = details["title"].as_str().and_then(title_of);
    let unavailable =
        (status["playableInEmbed"].as_bool() == Some(false)).then(|| NOT_EMBEDDABLE.to_owned());
    Ok(VideoMeta {
        title,
        duration_ms,
        unavailable,
    })
}

/// A title as entries keep it: trimmed, clipped, NULs removed; `None` when empty.
pub(super) fn title_of(raw: &str) -> Option<String> {
    Some(clip(raw.trim(), MAX_TITLE_CHARS)).filter(|t| !t.is_empty())
}

/// `lengthSeconds` (a string, as YouTube sends it, or a number) in milliseconds; `None`
/// when absent or zero (live streams say "0").
pub(super) fn length_ms(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| v.as_u64())
        .filter(|s| *s > 0)
        .and_then(|s| s.checked_mul(1000))
}

/// At most `max` characters, NULs removed (titles reach every client and the store).
fn clip(s: &str, max: usize) -> String {
    let mut s: String = s.chars().take(max).collect();
    nul::scrub_str(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(player: &str) -> String {
        format!(
            r#"<html><head><script nonce="x">var ytInitialPlayerResponse = {player};var meta = document.createElement('meta');</script></head></html>"#
        )
    }

    #[test]
    fn a_video_gives_title_and_duration() {
        let html = page(
            r#"{"playabilityStatus":{"status":"OK"},"videoDetails":{"videoId":"dQw4w9WgXcQ","title":"Rick Astley - Never Gonna Give You Up (Official Music Video)","lengthSeconds":"212","isLiveContent":false,"author":"Rick Astley"}}"#,
        );
        assert_eq!(
            parse_video(&html, "dQw4w9WgXcQ"),
            Ok(VideoMeta {
                title: Some("Rick Astley - Never Gonna Give You Up (Official Music Video)".into()),
                duration_ms: Some(212_000),
                unavailable: None,
            })
        );
    }

    #[test]
    fn a_live_stream_has_no_duration() {
        let html = page(
            r#"{"videoDetails":{"videoId":"jfKfPfyJRdk","title":"lofi hip hop radio","lengthSeconds":"0","isLive":true,"isLiveContent":true}}"#,
        );
        assert_eq!(
            parse_video(&html, "jfKfPfyJRdk"),
            Ok(VideoMeta {
                title: Some("lofi hip hop radio".into()),
                duration_ms: None,
                unavailable: None,
            })
        );
    }

    #[test]
    fn a_removed_or_unembeddable_video_says_why() {
        let html = page(
            r#"{"playabilityStatus":{"status":"ERROR","reason":"Video unavailable","errorScreen":{}}}"#,
        );
        assert_eq!(
            parse_video(&html, "aaaaaaaaaaa").map(|m| m.unavailable),
            Ok(Some("Video unavailable".into()))
        );
        let html = page(
            r#"{"playabilityStatus":{"status":"OK","playableInEmbed":false},"videoDetails":{"videoId":"aaaaaaaaaaa","title":"Music video","lengthSeconds":"200"}}"#,
        );
        let meta = parse_video(&html, "aaaaaaaaaaa").unwrap_or_default();
        assert_eq!(meta.title.as_deref(), Some("Music video"));
        assert_eq!(meta.unavailable.as_deref(), Some(NOT_EMBEDDABLE));
    }

    #[test]
    fn a_sign_in_or_bot_check_is_not_a_verdict_on_the_video() {
        let html = page(
            r#"{"playabilityStatus":{"status":"LOGIN_REQUIRED","reason":"Sign in to confirm you’re not a bot"}}"#,
        );
        assert!(parse_video(&html, "aaaaaaaaaaa").is_err());
        let html = page(
            r#"{"playabilityStatus":{"status":"UNPLAYABLE","reason":"The uploader has not made this video available in your country"}}"#,
        );
        assert!(parse_video(&html, "aaaaaaaaaaa").is_err());
    }

    #[test]
    fn long_titles_are_clipped_and_nuls_removed() {
        let long = format!("{}\\u0000{}", "é".repeat(150), "x".repeat(150));
        let html = page(&format!(
            r#"{{"videoDetails":{{"videoId":"aaaaaaaaaaa","title":"{long}","lengthSeconds":"61"}}}}"#
        ));
        let Ok(meta) = parse_video(&html, "aaaaaaaaaaa") else {
            panic!("not found")
        };
        let title = meta.title.unwrap_or_default();
        assert!(title.chars().count() <= MAX_TITLE_CHARS);
        assert!(!title.contains('\0'));
        assert_eq!(meta.duration_ms, Some(61_000));
    }

    #[test]
    fn a_consent_page_or_another_video_is_a_format_error() {
        assert!(parse_video("<html>Before you continue to YouTube</html>", "a").is_err());
        let other = page(r#"{"videoDetails":{"videoId":"bbbbbbbbbbb","title":"t"}}"#);
        assert!(parse_video(&other, "aaaaaaaaaaa").is_err());
        let empty = page(r#"{"responseContext":{}}"#);
        assert!(parse_video(&empty, "aaaaaaaaaaa").is_err());
    }
}
