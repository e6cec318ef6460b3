//! A playlist page (`/playlist?list=…`): its `ytInitialData` lists the first page of videos
//! (up to 100) as `playlistVideoRenderer`s with `videoId`, `title` and `lengthSeconds`;
//! deleted and private ones have `isPlayable: false` and come back marked unavailable. A
//! longer playlist ends the page with a `continuationItemRenderer` whose token InnerTube
//! `browse` turns into the next videos (`appendContinuationItemsAction`), and so on. Both
//! are found wherever they sit in the tree, so a reshuffled layout still reads. A playlist
//! that does not exist (or is private) has no videos and an alert saying so.

use lockstep_shared::protocol::bounds::MAX_TITLE_CHARS;
use serde_json::Value;

use super::page::{client_cfg, embedded_json, ClientCfg, PageError};
use super::video::{length_ms, title_of};
use crate::engine::youtube::is_video_id;
use crate::engine::{PlaylistItem, VideoMeta};

/// Why a listed video is left out.
const UNPLAYABLE: &str = "deleted or private video";
/// Videos read from one page at most.
const ITEMS_MAX: usize = 200;
/// How deep the tree is searched.
const DEPTH_MAX: usize = 32;

/// What a playlist page says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlaylistPage {
    /// Videos in playlist order; deleted and private ones marked `unavailable`.
    pub items: Vec<PlaylistItem>,
    /// Upstream's message when there is no playlist to show.
    pub alert: Option<String>,
    /// The token for the next videos, if there are more.
    pub continuation: Option<String>,
    /// The page's InnerTube settings, for `browse`.
    pub client: Option<ClientCfg>,
}

/// Reads a playlist page.
pub fn parse_playlist(html: &str) -> Result<PlaylistPage, PageError> {
    let data =
        embedded_json(html, "ytInitialData").ok_or_else(|| PageError("no ytInitialData".into()))?;
    let (items, continuation) = read(&data);
    let mut page = PlaylistPage {
        items,
        alert: None,
        continuation,
        client: client_cfg(html).ok(),
    };
    if page.items.is_empty() {
        page.alert = alert_text(&data["alerts"]);
        if page.alert.is_none() {
            return Err(PageError("no playlist videos and no alert".into()));
        }
    }
    Ok(page)
}

/// Reads a `browse` continuation answer: the next videos and the token after them.
pub fn parse_more(body: &str) -> Result<(Vec<PlaylistItem>, Option<String>), PageError> {
    let data: Value =
        serde_json::from_str(body).map_err(|e| PageError(format!("browse answer: {e}")))?;
    let actions = &data["onResponseReceivedActions"];
    if !actions.is_array() {
        return Err(PageError(
            "browse answer without onResponseReceivedActions".into(),
        ));
    }
    Ok(read(actions))
}

/// The videos under `v` and the first continuation token.
fn read(v: &Value) -> (Vec<PlaylistItem>, Option<String>) {
    let mut found = Found::default();
    collect(v, 0, &mut found);
    let items = found
        .renderers
        .into_iter()
        .filter_map(|r| {
            let video_id = r["videoId"].as_str().filter(|v| is_video_id(v))?;
            let unavailable =
                (r["isPlayable"].as_bool() == Some(false)).then(|| UNPLAYABLE.to_owned());
            let title = r["title"]["runs"][0]["text"]
                .as_str()
                .or_else(|| r["title"]["simpleText"].as_str())
                .and_then(title_of);
            let duration_ms = length_ms(&r["lengthSeconds"]);
            Some(PlaylistItem {
                video_id: video_id.to_owned(),
                meta: VideoMeta {
                    title,
                    duration_ms,
                    unavailable,
                },
            })
        })
        .collect();
    (items, found.continuation)
}

#[derive(Default)]
struct Found<'a> {
    renderers: Vec<&'a Value>,
    continuation: Option<String>,
}

/// Every `playlistVideoRenderer` under `v`, in document order, bounded in depth and count,
/// and the first `continuationItemRenderer`'s token.
fn collect<'a>(v: &'a Value, depth: usize, out: &mut Found<'a>) {
    if depth > DEPTH_MAX || out.renderers.len() >= ITEMS_MAX {
        return;
    }
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("playlistVideoRenderer") {
                out.renderers.push(r);
                return;
            }
            if let Some(c) = map.get("continuationItemRenderer") {
                let token = &c["continuationEndpoint"]["continuationCommand"]["token"];
                if out.continuation.is_none() {
                    out.continuation = token.as_str().map(str::to_owned);
                }
                return;
            }
            for child in map.values() {
                collect(child, depth + 1, out);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect(child, depth + 1, out);
            }
        }
        _ => {}
    }
}

/// The first alert's text (`alertWithButtonRenderer` or `alertRenderer`).
fn alert_text(alerts: &Value) -> Option<String> {
    alerts.as_array()?.iter().find_map(|a| {
        let r = a
            .get("alertWithButtonRenderer")
            .or_else(|| a.get("alertRenderer"))?;
        let text = r["text"]["simpleText"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                r["text"]["runs"].as_array().map(|runs| {
                    runs.iter()
                        .filter_map(|x| x["text"].as_str())
                        .collect::<String>()
                })
            })?;
        Some(text.chars().take(MAX_TITLE_CHARS).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(data: &str) -> String {
        format!(r#"<html><script nonce="x">var ytInitialData = {data};</script></html>"#)
    }

    fn item(id: &str, title: &str, len: &str, playable: bool) -> String {
        format!(
            r#"{{"playlistVideoRenderer":{{"videoId":"{id}","title":{{"runs":[{{"text":"{title}"}}]}},"index":{{"simpleText":"1"}},"lengthSeconds":"{len}","isPlayable":{playable}}}}}"#
        )
    }

    #[test]
    fn videos_in_order_with_titles_and_lengths_unplayable_ones_counted() {
        let items = [
            item("dQw4w9WgXcQ", "Never Gonna Give You Up", "212", true),
            item("aaaaaaaaaaa", "[Private video]", "0", false),
            item("kJQP7kiw5Fk", "Despacito", "282", true),
        ]
        .join(",");
        let data = format!(
            r#"{{"contents":{{"twoColumnBrowseResultsRenderer":{{"tabs":[{{"tabRenderer":{{"selected":true,"content":{{"sectionListRenderer":{{"contents":[{{"itemSectionRenderer":{{"contents":[{{"playlistVideoListRenderer":{{"contents":[{items},{{"continuationItemRenderer":{{}}}}],"playlistId":"PLx"}}}}]}}}}]}}}}}}}}]}}}}}}"#
        );
        let p = parse_playlist(&page(&data)).unwrap_or_default();
        let got: Vec<(&str, Option<&str>, Option<u64>, bool)> = p
            .items
            .iter()
            .map(|i| {
                let m = &i.meta;
                (
                    i.video_id.as_str(),
                    m.title.as_deref(),
                    m.duration_ms,
                    m.unavailable.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "dQw4w9WgXcQ",
                    Some("Never Gonna Give You Up"),
                    Some(212_000),
                    false
                ),
                ("aaaaaaaaaaa", Some("[Private video]"), None, true),
                ("kJQP7kiw5Fk", Some("Despacito"), Some(282_000), false),
            ]
        );
        assert_eq!(p.alert, None);
    }

    #[test]
    fn a_missing_playlist_says_so_and_a_changed_page_is_a_format_error() {
        let data = r#"{"alerts":[{"alertWithButtonRenderer":{"type":"ERROR","text":{"simpleText":"The playlist does not exist."}}}]}"#;
        let p = parse_playlist(&page(data)).unwrap_or_default();
        assert_eq!(p.alert.as_deref(), Some("The playlist does not exist."));
        assert!(p.items.is_empty());
        assert!(parse_playlist(&page(r#"{"contents":{}}"#)).is_err());
        assert!(parse_playlist("<html>consent</html>").is_err());
    }

    #[test]
    fn a_long_playlist_continues_through_browse() {
        let cont = r#"{"continuationItemRenderer":{"trigger":"CONTINUATION_TRIGGER_ON_ITEM_SHOWN","continuationEndpoint":{"commandMetadata":{"webCommandMetadata":{"sendPost":true,"apiUrl":"/youtubei/v1/browse"}},"continuationCommand":{"token":"4qmFsgKlARIkVkxQTA","request":"CONTINUATION_REQUEST_TYPE_BROWSE"}}}}"#;
        let html = format!(
            r#"<script>ytcfg.set({{"INNERTUBE_API_KEY":"k1","INNERTUBE_CONTEXT_CLIENT_VERSION":"2.2024"}});</script>{}"#,
            page(&format!(
                r#"{{"contents":[{},{cont}]}}"#,
                item("dQw4w9WgXcQ", "One", "1", true)
            ))
        );
        let p = parse_playlist(&html).unwrap_or_default();
        assert_eq!(p.continuation.as_deref(), Some("4qmFsgKlARIkVkxQTA"));
        assert_eq!(p.client.map(|c| c.api_key), Some("k1".to_owned()));
        let more = format!(
            r#"{{"responseContext":{{}},"onResponseReceivedActions":[{{"appendContinuationItemsAction":{{"continuationItems":[{}],"targetId":"pl-video-list"}}}}]}}"#,
            item("kJQP7kiw5Fk", "Two", "2", true)
        );
        let (items, next) = parse_more(&more).unwrap_or_default();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].video_id, "kJQP7kiw5Fk");
        assert_eq!(next, None);
        assert!(parse_more(r#"{"error":{"code":400}}"#).is_err());
        assert!(parse_more("<html>").is_err());
    }

    #[test]
    fn a_huge_page_is_read_only_so_far() {
        let items: Vec<String> = (0..500)
            .map(|i| item(&format!("v{i:010}"), "t", "1", true))
            .collect();
        let data = format!(r#"{{"contents":[{}]}}"#, items.join(","));
        let p = parse_playlist(&page(&data)).unwrap_or_default();
        assert_eq!(p.items.len(), ITEMS_MAX);
    }
}
