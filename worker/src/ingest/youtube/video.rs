//! A queued video's title and duration, read from its watch page's
//! `ytInitialPlayerResponse` (`videoDetails.title`, `videoDetails.lengthSeconds`; a video
//! that cannot be played has `playabilityStatus.status` other than `OK` and no details).

use lockstep_shared::protocol::bounds::MAX_TITLE_CHARS;
use lockstep_shared::protocol::nul;

use super::page::{embedded_json, PageError};
use crate::engine::VideoMeta;

/// What a watch page says about one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoInfo {
    Found(VideoMeta),
    /// Removed, private, blocked…: upstream's reason.
    Unavailable(String),
}

/// Reads `video_id`'s watch page.
pub fn parse_video(html: &str, video_id: &str) -> Result<VideoInfo, PageError> {
    let player = embedded_json(html, "ytInitialPlayerResponse")
        .ok_or_else(|| PageError("no ytInitialPlayerResponse".into()))?;
    let details = &player["videoDetails"];
    if !details.is_object() {
        let status = &player["playabilityStatus"];
        let reason = status["reason"]
            .as_str()
            .or_else(|| status["status"].as_str())
            .ok_or_else(|| PageError("neither videoDetails nor playabilityStatus".into()))?;
        return Ok(VideoInfo::Unavailable(clip(reason, MAX_TITLE_CHARS)));
    }
    if details["videoId"].as_str() != Some(video_id) {
        return Err(PageError(format!(
            "the page is for {:?}, not {video_id}",
            details["videoId"].as_str().unwrap_or("no video")
        )));
    }
    let live =
        details["isLive"].as_bool() == Some(true) || details["isUpcoming"].as_bool() == Some(true);
    let seconds = details["lengthSeconds"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| details["lengthSeconds"].as_u64());
    let duration_ms = match seconds {
        Some(s) if s > 0 && !live => s.checked_mul(1000),
        _ => None,
    };
    let title = details["title"]
        .as_str()
        .map(|t| clip(t.trim(), MAX_TITLE_CHARS))
        .filter(|t| !t.is_empty());
    Ok(VideoInfo::Found(VideoMeta { title, duration_ms }))
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
            Ok(VideoInfo::Found(VideoMeta {
                title: Some("Rick Astley - Never Gonna Give You Up (Official Music Video)".into()),
                duration_ms: Some(212_000),
            }))
        );
    }

    #[test]
    fn a_live_stream_has_no_duration() {
        let html = page(
            r#"{"videoDetails":{"videoId":"jfKfPfyJRdk","title":"lofi hip hop radio","lengthSeconds":"0","isLive":true,"isLiveContent":true}}"#,
        );
        assert_eq!(
            parse_video(&html, "jfKfPfyJRdk"),
            Ok(VideoInfo::Found(VideoMeta {
                title: Some("lofi hip hop radio".into()),
                duration_ms: None,
            }))
        );
    }

    #[test]
    fn an_unplayable_video_says_why() {
        let html = page(
            r#"{"playabilityStatus":{"status":"ERROR","reason":"Video unavailable","errorScreen":{}}}"#,
        );
        assert_eq!(
            parse_video(&html, "aaaaaaaaaaa"),
            Ok(VideoInfo::Unavailable("Video unavailable".into()))
        );
    }

    #[test]
    fn long_titles_are_clipped_and_nuls_removed() {
        let long = format!("{}\\u0000{}", "é".repeat(150), "x".repeat(150));
        let html = page(&format!(
            r#"{{"videoDetails":{{"videoId":"aaaaaaaaaaa","title":"{long}","lengthSeconds":"61"}}}}"#
        ));
        let Ok(VideoInfo::Found(meta)) = parse_video(&html, "aaaaaaaaaaa") else {
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
